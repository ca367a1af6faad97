"""The `chimera` console script: `chimera info` (later: predict, train, evaluate)."""
import argparse
import platform
import sys

import torch

import chimera


def _info(args):
    from chimera import ops

    ext = ops.extension_info()
    lines = [
        f"chimera {chimera.__version__}",
        f"torch   {torch.__version__} (CUDA {torch.version.cuda or 'none'})",
        f"python  {platform.python_version()} ({sys.executable})",
    ]
    if ext["loaded"]:
        build = "with CUDA kernels" if ext["with_cuda"] else "CPU kernels only"
        lines.append(f"extension chimera._C: built against torch {ext['built_against_torch']}, {build}")
        lines.append(f"  {ext['path']}")
    else:
        lines.append(f"extension chimera._C: not in use — {ext['reason']}")
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    lines.append("devices: " + ", ".join(devices))
    table = ops.backend()
    width = max(len(op) for op in table)
    lines.append("ops:" + " " * (width - 1) + "cpu        cuda")
    for op, where in sorted(table.items()):
        lines.append(f"  {op:<{width}}  {where['cpu']:<9}  {where['cuda']}")
    print("\n".join(lines))
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="chimera", description=chimera.__doc__)
    parser.add_argument("--version", action="version", version=f"chimera {chimera.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = sub.add_parser("info", help="versions, extension build and the backend of each op")
    info.set_defaults(func=_info)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
