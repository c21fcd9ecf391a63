"""p2s_lib: Pix2Seq built step by step. Modules are generated from notebooks/ by nbdev-export."""
__version__ = "0.1.0"
