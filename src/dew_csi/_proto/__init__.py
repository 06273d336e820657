"""Generated protobuf/gRPC stubs and the .proto files they come from.

Regenerate with `python scripts/gen_protos.py`; never edit the generated files by hand.
"""
