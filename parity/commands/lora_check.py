"""`parity lora-check FILE`: will diffusers, ComfyUI and the reference inference server apply this AI Toolkit
adapter file as it was trained? (parity.lora_audit, docs/lora-audit.md)"""

from __future__ import annotations

HELP = "will your stack apply this LoRA/LoKr/DoRA file as AI Toolkit trained it? (diffusers, ComfyUI, server)"
EXAMPLES = """
  parity lora-check output/my_lora/my_lora.safetensors
  parity lora-check my_lokr.safetensors --stack diffusers
  parity lora-check my_lora.safetensors --arch flux2_klein_4b --json
exit code: 0 every stack asked applies the file as trained, 1 some stack does not, 2 bad input
"""


def add_arguments(p) -> None:
    from parity.lora_audit import STACKS
    from parity.lora_audit.arch import ARCHES

    p.add_argument("file", help="the adapter file (.safetensors)")
    p.add_argument("--stack", choices=(*STACKS, "all"), default="all", help="which stack to audit (default all)")
    p.add_argument("--arch", choices=ARCHES, help="the model family (default: inferred from the tensor shapes)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args) -> int:
    from parity.jsonio import dumps
    from parity.lora_audit import STACKS, audit_file

    stacks = STACKS if args.stack == "all" else (args.stack,)
    report = audit_file(args.file, stacks, args.arch)
    if args.json:
        print(dumps(report.to_dict(), indent=2))
    else:
        print(f"{args.file}: {report.file.describe()}, arch {report.arch}")
        for line in report.lines():
            print(f"  {line}")
    return 0 if report.ok else 1
