"""Generate serving/roost_serving/proto/open_inference_pb2.py(i) from open_inference.proto.

    python hack/gen_proto.py            # rewrite the checked-in modules
    python hack/gen_proto.py --check    # exit 1 if they differ from a fresh generation

The generated modules are checked in, so neither the serving image nor `pip install roost`
needs the generator; it is pinned in the dev extra (grpcio-tools==1.80.0, protobuf gencode
6.31.1) and a unit test runs `--check`. One edit is applied after protoc: the messages are
registered in a descriptor pool of roost's own rather than protobuf's default pool, because
tritonclient and KServe register the same `inference.*` names from their own .proto files,
and the default pool refuses a second definition of a name in the same process.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

SERVING = Path(__file__).resolve().parent.parent / "serving"
PROTO = "roost_serving/proto/open_inference.proto"
OUTPUTS = (
    "roost_serving/proto/open_inference_pb2.py",
    "roost_serving/proto/open_inference_pb2.pyi",
)
DEFAULT_POOL = "_descriptor_pool.Default()"
OWN_POOL = "_descriptor_pool.DescriptorPool()"


def generate(out: Path) -> dict[str, str]:
    """Run protoc into ``out``; returns the generated files' text by relative path."""
    status = protoc.main(
        ["protoc", f"-I{SERVING}", f"--python_out={out}", f"--pyi_out={out}", PROTO]
    )
    if status != 0:
        raise SystemExit(f"protoc failed with status {status}")
    files = {name: (out / name).read_text() for name in OUTPUTS}
    module = OUTPUTS[0]
    if files[module].count(DEFAULT_POOL) != 1:
        raise SystemExit(f"{module}: expected one {DEFAULT_POOL}; has the generator changed?")
    files[module] = files[module].replace(DEFAULT_POOL, OWN_POOL)
    return files


def main() -> None:
    """Write or check the generated modules."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
    stale = [name for name, text in files.items() if (SERVING / name).read_text() != text]
    if args.check:
        if stale:
            print(f"out of date: {', '.join(stale)}; run python hack/gen_proto.py", file=sys.stderr)
            raise SystemExit(1)
        return
    for name, text in files.items():
        (SERVING / name).write_text(text)


if __name__ == "__main__":
    main()
