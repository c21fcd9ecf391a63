"""Tests for data_scripts/download_voc.py — all offline: a local http.server on 127.0.0.1 plays the host."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import io
import random
import socket
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "data_scripts" / "download_voc.py"
TIMEOUT = 5.0


# --------------------------------------------------------------------------- fixtures / helpers


@pytest.fixture(scope="module")
def dv():
    """The script, imported from its path (it is not part of the package)."""
    spec = importlib.util.spec_from_file_location("p2s_download_voc", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look the module up while the class is built
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def make_tar(members: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    """A tar in memory; tuples are regular files, TarInfo objects are added as they are."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
            else:
                name, data = m
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def voc_tar(year: str = "2007", split: str = "trainval", ids: tuple[str, ...] = ("000001", "000002")) -> bytes:
    """A tiny VOC-shaped archive: VOCdevkit/VOC{year}/{Annotations,JPEGImages,ImageSets/Main}."""
    base = f"VOCdevkit/VOC{year}"
    members: list = []
    for d in ("VOCdevkit", base, f"{base}/Annotations", f"{base}/JPEGImages", f"{base}/ImageSets",
              f"{base}/ImageSets/Main"):
        info = tarfile.TarInfo(d)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        members.append(info)
    for i in ids:
        xml = f"<annotation><filename>{i}.jpg</filename></annotation>"
        members.append((f"{base}/Annotations/{i}.xml", xml.encode()))
        members.append((f"{base}/JPEGImages/{i}.jpg", b"\xff\xd8fakejpeg" + i.encode()))
    members.append((f"{base}/ImageSets/Main/{split}.txt", ("\n".join(ids) + "\n").encode()))
    return make_tar(members)


def fake_archive(dv, key: str, filename: str, data: bytes, year_dir: str, urls: tuple[str, ...] = ()):
    return dv.Archive(key, filename, md5(data), urls, year_dir)


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class FakeHost:
    """Serves ``files`` over HTTP on 127.0.0.1 and records every request.

    honour_range: answer ``Range: bytes=N-`` with 206 (or 416), else ignore it and send 200.
    cut_first: on the first request, send only this many body bytes and drop the connection.
    """

    def __init__(self, files: dict[str, bytes], honour_range: bool = True, cut_first: int | None = None):
        self.files = files
        self.honour_range = honour_range
        self.cut_first = cut_first
        self.requests: list[dict] = []
        host = self

        class Handler(BaseHTTPRequestHandler):
            timeout = TIMEOUT

            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                host._get(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def _get(self, h: BaseHTTPRequestHandler) -> None:
        name = h.path.lstrip("/")
        rng = h.headers.get("Range")
        record = {"path": name, "range": rng, "sent": 0}
        self.requests.append(record)
        data = self.files.get(name)
        if data is None:
            h.send_error(404)
            return
        start = 0
        if rng and self.honour_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(data)}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            h.send_response(200)
        body = data[start:]
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if self.cut_first is not None and len(self.requests) == 1:
            body = body[: self.cut_first]
        record["sent"] = len(body)  # before writing: the client may finish reading before write() returns
        h.wfile.write(body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=TIMEOUT)


@pytest.fixture
def serve():
    hosts: list[FakeHost] = []

    def start(files: dict[str, bytes], **opts) -> FakeHost:
        hosts.append(FakeHost(files, **opts))
        return hosts[-1]

    yield start
    for h in hosts:
        h.close()


def payload(n: int = 300_000) -> bytes:
    return random.Random(0).randbytes(n)


def leftovers(root: Path) -> list[str]:
    """Temporary extraction folders / partial files left in root."""
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".p2s_extract_") or p.suffix == ".part")


# --------------------------------------------------------------------------- archive table


def test_archive_table_matches_torchvision(dv):
    """Our MD5s / file names agree with torchvision's DATASET_YEAR_DICT (read from source, no import)."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        pytest.skip("torchvision not installed")
    voc_py = Path(spec.origin).parent / "datasets" / "voc.py"
    tree = ast.parse(voc_py.read_text())
    node = next(n.value for n in ast.walk(tree)
                if isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "DATASET_YEAR_DICT" for t in n.targets))
    # {year: {key: value}}, keeping only the plain string values (base_dir is an os.path.join call)
    table = {ast.literal_eval(k): {ast.literal_eval(kk): vv.value for kk, vv in zip(v.keys, v.values)
                                   if isinstance(vv, ast.Constant)}
             for k, v in zip(node.keys, node.values)}
    for ours, theirs in [("2007-trainval", "2007"), ("2007-test", "2007-test"), ("2012-trainval", "2012")]:
        a = dv.ARCHIVES[ours]
        assert (a.filename, a.md5) == (table[theirs]["filename"], table[theirs]["md5"]), theirs
        assert table[theirs]["url"] in a.urls
    assert dv.ARCHIVES["2007-trainval"].md5 == "c52e279531787c972589f7e41ab4ae64"
    assert dv.ARCHIVES["2007-test"].md5 == "b6e924de25625d8de591ea690078ad9f"
    assert dv.ARCHIVES["2012-trainval"].md5 == "6cd6e144f989b92b3379bac3b3de84fd"
    assert any("host.robots.ox.ac.uk" in u for u in dv.ARCHIVES["2007-test"].urls)


def test_mirror_replaces_host_keeps_file_name(dv):
    a = dv.ARCHIVES["2012-trainval"]
    assert dv.archive_urls(a, "https://example.org/voc/") == ["https://example.org/voc/VOCtrainval_11-May-2012.tar"]
    assert dv.archive_urls(a) == list(a.urls)


def test_unknown_set_is_a_clear_error(dv, tmp_path):
    with pytest.raises(dv.DownloadError, match=r"unknown VOC set.*2010"):
        dv.prepare_voc(tmp_path, ["2010"], progress=False)


# --------------------------------------------------------------------------- download


def test_full_download_and_layout(dv, tmp_path, serve):
    tv07, te07, tv12 = voc_tar("2007", "trainval"), voc_tar("2007", "test", ("000003",)), voc_tar("2012")
    host = serve({"tv07.tar": tv07, "te07.tar": te07, "tv12.tar": tv12})
    table = {
        "2007-trainval": fake_archive(dv, "2007-trainval", "tv07.tar", tv07, "VOC2007"),
        "2007-test": fake_archive(dv, "2007-test", "te07.tar", te07, "VOC2007"),
        "2012-trainval": fake_archive(dv, "2012-trainval", "tv12.tar", tv12, "VOC2012"),
    }
    root = tmp_path / "data"
    out = dv.prepare_voc(root, dv.DEFAULT_SETS, host.url, archives=table, progress=False, timeout=TIMEOUT)

    assert out == root / "VOCdevkit"
    v07, v12 = out / "VOC2007", out / "VOC2012"
    assert sorted(p.name for p in (v07 / "JPEGImages").iterdir()) == ["000001.jpg", "000002.jpg", "000003.jpg"]
    assert (v07 / "Annotations" / "000003.xml").read_text().startswith("<annotation>")
    assert (v07 / "ImageSets/Main/trainval.txt").read_text().split() == ["000001", "000002"]
    assert (v07 / "ImageSets/Main/test.txt").read_text().split() == ["000003"]
    assert (v12 / "ImageSets/Main/trainval.txt").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["VOC2007", "VOC2012"]
    for a in table.values():
        assert dv.is_complete(root, a)
        assert md5((root / a.filename).read_bytes()) == a.md5  # archives are kept
    assert leftovers(root) == []
    assert [r["range"] for r in host.requests] == [None, None, None]


def test_resume_requests_only_remaining_bytes(dv, tmp_path, serve):
    data = payload()
    host = serve({"big.tar": data})
    dest = tmp_path / "big.tar"
    done = 123_457
    (tmp_path / "big.tar.part").write_bytes(data[:done])

    dv.download_file(f"{host.url}/big.tar", dest, md5(data), progress=False, timeout=TIMEOUT)

    assert dest.read_bytes() == data
    assert not (tmp_path / "big.tar.part").exists()
    assert host.requests == [{"path": "big.tar", "range": f"bytes={done}-", "sent": len(data) - done}]


def test_broken_connection_then_rerun_resumes(dv, tmp_path, serve):
    data = payload()
    host = serve({"big.tar": data}, cut_first=100_000)
    dest = tmp_path / "big.tar"
    with pytest.raises(dv.DownloadError, match="rerun to resume"):
        dv.download_file(f"{host.url}/big.tar", dest, md5(data), progress=False, timeout=TIMEOUT)
    assert not dest.exists()
    assert (tmp_path / "big.tar.part").stat().st_size == 100_000

    dv.download_file(f"{host.url}/big.tar", dest, md5(data), progress=False, timeout=TIMEOUT)
    assert dest.read_bytes() == data
    assert [r["range"] for r in host.requests] == [None, "bytes=100000-"]
    assert host.requests[1]["sent"] == len(data) - 100_000


def test_server_ignoring_range_restarts(dv, tmp_path, serve):
    data = payload()
    host = serve({"big.tar": data}, honour_range=False)
    dest = tmp_path / "big.tar"
    (tmp_path / "big.tar.part").write_bytes(b"garbage that must not survive" * 100)

    dv.download_file(f"{host.url}/big.tar", dest, md5(data), progress=False, timeout=TIMEOUT)

    assert dest.read_bytes() == data
    assert host.requests[0]["range"] is not None  # we asked to resume ...
    assert host.requests[0]["sent"] == len(data)  # ... and got (and kept) the whole file instead
    assert len(host.requests) == 1


@pytest.mark.parametrize("case", ["already_complete", "longer_than_file"])
def test_unresumable_part_file(dv, tmp_path, serve, case):
    data = payload(50_000)
    host = serve({"f.tar": data})
    part = tmp_path / "f.tar.part"
    part.write_bytes(data if case == "already_complete" else data + b"stale tail")

    dv.download_file(f"{host.url}/f.tar", tmp_path / "f.tar", md5(data), progress=False, timeout=TIMEOUT)

    assert (tmp_path / "f.tar").read_bytes() == data
    sent = [r["sent"] for r in host.requests]
    assert sent == ([0] if case == "already_complete" else [0, len(data)])


def test_http_404_names_the_url(dv, tmp_path, serve):
    host = serve({})
    with pytest.raises(dv.DownloadError, match=r"HTTP error 404.*/missing\.tar"):
        dv.download_file(f"{host.url}/missing.tar", tmp_path / "missing.tar", progress=False, timeout=TIMEOUT)


# --------------------------------------------------------------------------- checksum


def test_checksum_mismatch_fails_clearly_and_leaves_no_tree(dv, tmp_path, serve):
    data = voc_tar()
    host = serve({"tv07.tar": data})
    bad = dv.Archive("2007-trainval", "tv07.tar", "0" * 32, (), "VOC2007")
    root = tmp_path / "data"
    with pytest.raises(dv.ChecksumError) as err:
        dv.prepare_voc(root, ["2007-trainval"], host.url, archives={"2007-trainval": bad},
                       progress=False, timeout=TIMEOUT)
    msg = str(err.value)
    assert "tv07.tar" in msg and "0" * 32 in msg and md5(data) in msg
    assert not (root / "VOCdevkit").exists()
    assert not (root / "tv07.tar").exists()
    assert (root / "tv07.tar.corrupt").read_bytes() == data
    assert leftovers(root) == []


def test_hand_placed_archive_is_verified_and_used_offline(dv, tmp_path):
    data = voc_tar()
    root = tmp_path / "data"
    root.mkdir()
    (root / "tv07.tar").write_bytes(data)
    table = {"2007-trainval": fake_archive(dv, "2007-trainval", "tv07.tar", data, "VOC2007")}
    dv.prepare_voc(root, ["2007-trainval"], closed_port_url(), archives=table, progress=False, timeout=TIMEOUT)
    assert (root / "VOCdevkit/VOC2007/ImageSets/Main/trainval.txt").is_file()
    assert dv.is_complete(root, table["2007-trainval"])


def test_hand_placed_corrupt_archive_is_moved_aside(dv, tmp_path):
    data = voc_tar()
    root = tmp_path / "data"
    root.mkdir()
    (root / "tv07.tar").write_bytes(data[:-512])  # truncated copy
    table = {"2007-trainval": fake_archive(dv, "2007-trainval", "tv07.tar", data, "VOC2007")}
    with pytest.raises(dv.ChecksumError, match=rf"tv07\.tar: expected {md5(data)}, got {md5(data[:-512])}"):
        dv.prepare_voc(root, ["2007-trainval"], closed_port_url(), archives=table, progress=False)
    assert not (root / "tv07.tar").exists() and (root / "tv07.tar.corrupt").exists()
    assert not (root / "VOCdevkit").exists()


# --------------------------------------------------------------------------- safe extraction


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


MALICIOUS = {
    "dotdot": lambda out: [("../evil.txt", b"x")],
    "dotdot_deep": lambda out: [("VOCdevkit/../../../evil.txt", b"x")],
    "absolute": lambda out: [(str(out / "evil.txt"), b"x")],
    "symlink_out": lambda out: [_link("VOCdevkit/VOC2007/esc", "../../../outside", tarfile.SYMTYPE),
                                ("VOCdevkit/VOC2007/esc/evil.txt", b"x")],
    "symlink_abs": lambda out: [_link("VOCdevkit/VOC2007/esc", str(out), tarfile.SYMTYPE),
                                ("VOCdevkit/VOC2007/esc/evil.txt", b"x")],
    "hardlink_abs": lambda out: [_link("VOCdevkit/VOC2007/passwd", str(out / "secret"), tarfile.LNKTYPE)],
}


@pytest.mark.parametrize("guard", ["both", "own_checks_only", "data_filter_only"])
@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_malicious_tar_is_refused(dv, tmp_path, monkeypatch, case, guard):
    """Each of the two guards (our member checks, tarfile's "data" filter) is enough on its own."""
    if guard == "own_checks_only":
        monkeypatch.setattr(dv, "_HAS_DATA_FILTER", False)  # as on a Python without tarfile filters
    elif guard == "data_filter_only":
        if not dv._HAS_DATA_FILTER:
            pytest.skip("this Python has no tarfile data filter")
        monkeypatch.setattr(dv, "_check_member", lambda member: None)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("do not touch")
    data = make_tar([("VOCdevkit/VOC2007/ok.txt", b"fine")] + MALICIOUS[case](outside))
    root = tmp_path / "data"
    root.mkdir()
    (root / "evil.tar").write_bytes(data)
    table = {"2007-trainval": fake_archive(dv, "2007-trainval", "evil.tar", data, "VOC2007")}

    if case == "absolute" and guard == "data_filter_only":
        # the data filter alone strips the leading "/" instead of refusing: the file stays inside
        dv.prepare_voc(root, ["2007-trainval"], closed_port_url(), archives=table, progress=False)
        assert sorted(p.name for p in root.iterdir()) == ["VOCdevkit", "evil.tar"]
    else:
        with pytest.raises(dv.UnsafeArchiveError, match="refusing"):
            dv.prepare_voc(root, ["2007-trainval"], closed_port_url(), archives=table, progress=False)
        assert sorted(p.name for p in root.iterdir()) == ["evil.tar"]  # no VOCdevkit, no temp dir

    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "outside"]
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert (outside / "secret").read_text() == "do not touch"


def test_safe_extract_direct(dv, tmp_path):
    good = tmp_path / "good.tar"
    good.write_bytes(voc_tar())
    dv.safe_extract(good, tmp_path / "x")
    assert (tmp_path / "x/VOCdevkit/VOC2007/JPEGImages/000001.jpg").is_file()
    bad = tmp_path / "bad.tar"
    bad.write_bytes(make_tar([("/etc/evil_p2s", b"x")]))
    with pytest.raises(dv.UnsafeArchiveError, match="absolute path.*/etc/evil_p2s"):
        dv.safe_extract(bad, tmp_path / "y")


def test_archive_without_voc_folder_is_rejected(dv, tmp_path):
    data = make_tar([("something/else.txt", b"x")])
    root = tmp_path / "data"
    root.mkdir()
    (root / "odd.tar").write_bytes(data)
    table = {"2012-trainval": fake_archive(dv, "2012-trainval", "odd.tar", data, "VOC2012")}
    with pytest.raises(dv.DownloadError, match=r"odd\.tar does not contain VOCdevkit/VOC2012"):
        dv.prepare_voc(root, ["2012-trainval"], archives=table, progress=False)
    assert sorted(p.name for p in root.iterdir()) == ["odd.tar"]


# --------------------------------------------------------------------------- offline


def test_offline_error_is_clear(dv, tmp_path):
    a = dv.Archive("2007-test", "te07.tar", "0" * 32, (f"{closed_port_url()}/a/te07.tar",
                                                       f"{closed_port_url()}/b/te07.tar"), "VOC2007")
    root = tmp_path / "data"
    with pytest.raises(dv.DownloadError) as err:
        dv.prepare_voc(root, ["2007-test"], archives={"2007-test": a}, progress=False, timeout=TIMEOUT)
    msg = str(err.value)
    for url in a.urls:
        assert url in msg
    assert "--mirror" in msg
    assert "make_synthetic_voc" in msg
    assert str(root / "te07.tar") in msg  # where to place the archive by hand
    assert not (root / "VOCdevkit").exists()


def test_main_offline_exit_code_and_no_traceback(dv, tmp_path, capsys):
    table = {"2007-trainval": dv.Archive("2007-trainval", "tv07.tar", "0" * 32, (), "VOC2007")}
    mirror = closed_port_url()
    code = dv.main(["--root", str(tmp_path), "--sets", "2007-trainval", "--mirror", mirror,
                    "--no-progress", "--timeout", "5"], archives=table)
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: could not download tv07.tar")
    assert f"{mirror}/tv07.tar" in err and "--mirror" in err and "make_synthetic_voc" in err
    assert "Traceback" not in err


def test_main_success_and_delete_archives(dv, tmp_path, serve, capsys):
    data = voc_tar("2012")
    host = serve({"tv12.tar": data})
    table = {"2012-trainval": fake_archive(dv, "2012-trainval", "tv12.tar", data, "VOC2012")}
    code = dv.main(["--root", str(tmp_path), "--sets", "2012-trainval", "--mirror", host.url,
                    "--no-progress", "--delete-archives"], archives=table)
    assert code == 0
    assert "VOC is ready" in capsys.readouterr().out
    assert (tmp_path / "VOCdevkit/VOC2012/JPEGImages/000001.jpg").is_file()
    assert not (tmp_path / "tv12.tar").exists()


def test_main_interrupted(dv, tmp_path, monkeypatch, capsys):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dv, "prepare_voc", boom)
    assert dv.main(["--root", str(tmp_path)]) == 130
    assert "rerun" in capsys.readouterr().err


def test_script_runs_standalone(tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "--mirror" in res.stdout and "2007-test" in res.stdout
    res = subprocess.run([sys.executable, str(SCRIPT), "--root", str(tmp_path), "--sets", "1999"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "invalid choice" in res.stderr


# --------------------------------------------------------------------------- reruns and interruptions


def test_rerun_skips_completed_archives(dv, tmp_path, serve, capsys):
    data = voc_tar()
    host = serve({"tv07.tar": data})
    table = {"2007-trainval": fake_archive(dv, "2007-trainval", "tv07.tar", data, "VOC2007")}
    root = tmp_path / "data"
    dv.prepare_voc(root, ["2007-trainval"], host.url, archives=table, progress=False, timeout=TIMEOUT)
    assert len(host.requests) == 1
    (root / "tv07.tar").unlink()  # not needed any more
    stamp = (root / "VOCdevkit/VOC2007/JPEGImages/000001.jpg").stat().st_mtime_ns
    capsys.readouterr()

    dv.prepare_voc(root, ["2007-trainval"], closed_port_url(), archives=table, progress=False)

    assert len(host.requests) == 1
    assert "skipping" in capsys.readouterr().out
    assert (root / "VOCdevkit/VOC2007/JPEGImages/000001.jpg").stat().st_mtime_ns == stamp


def test_interrupted_extraction_leaves_no_marker(dv, tmp_path, monkeypatch):
    data = voc_tar()
    root = tmp_path / "data"
    root.mkdir()
    (root / "tv07.tar").write_bytes(data)
    table = {"2007-trainval": fake_archive(dv, "2007-trainval", "tv07.tar", data, "VOC2007")}
    real = dv.safe_extract

    def extract_then_interrupt(tar_path, dest, **kwargs):
        real(tar_path, dest, **kwargs)
        raise KeyboardInterrupt  # Ctrl-C right after the tar was unpacked

    monkeypatch.setattr(dv, "safe_extract", extract_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        dv.prepare_voc(root, ["2007-trainval"], archives=table, progress=False)
    assert not dv.is_complete(root, table["2007-trainval"])
    assert not (root / "VOCdevkit").exists()
    assert leftovers(root) == []

    monkeypatch.setattr(dv, "safe_extract", real)
    dv.prepare_voc(root, ["2007-trainval"], archives=table, progress=False)
    assert dv.is_complete(root, table["2007-trainval"])
    assert (root / "VOCdevkit/VOC2007/ImageSets/Main/trainval.txt").is_file()


def test_interrupted_merge_keeps_split_lists_back(dv, tmp_path, monkeypatch):
    """2007 test merges into VOC2007: if cut short, no marker and no test.txt; a rerun completes it."""
    tv, te = voc_tar("2007", "trainval"), voc_tar("2007", "test", ("000003",))
    root = tmp_path / "data"
    root.mkdir()
    (root / "tv07.tar").write_bytes(tv)
    (root / "te07.tar").write_bytes(te)
    table = {"2007-trainval": fake_archive(dv, "2007-trainval", "tv07.tar", tv, "VOC2007"),
             "2007-test": fake_archive(dv, "2007-test", "te07.tar", te, "VOC2007")}
    dv.prepare_voc(root, ["2007-trainval"], archives=table, progress=False)
    real = dv._merge_tree

    def merge_until_imagesets(src, dst):
        if src.name == "ImageSets":
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(dv, "_merge_tree", merge_until_imagesets)
    with pytest.raises(KeyboardInterrupt):
        dv.prepare_voc(root, ["2007-test"], archives=table, progress=False)
    v07 = root / "VOCdevkit/VOC2007"
    assert (v07 / "JPEGImages/000003.jpg").exists()  # images went first ...
    assert not (v07 / "ImageSets/Main/test.txt").exists()  # ... the split list did not
    assert not dv.is_complete(root, table["2007-test"])
    assert dv.is_complete(root, table["2007-trainval"])
    assert leftovers(root) == []

    monkeypatch.setattr(dv, "_merge_tree", real)
    dv.prepare_voc(root, ["2007-trainval", "2007-test"], archives=table, progress=False)
    assert dv.is_complete(root, table["2007-test"])
    assert (v07 / "ImageSets/Main/test.txt").read_text().split() == ["000003"]
    assert (v07 / "ImageSets/Main/trainval.txt").read_text().split() == ["000001", "000002"]
