"""Mutation fuzzing of the C++ runtime's readers, longer than the test's: thousands of seeded mutations of a PNG,
a JPEG, a WebP and a meta.json (tests/fuzzing.py: bit flips, truncations, inserted bytes, overwritten size and
length fields; wrong types, hostile numbers, missing keys, damaged text) through `siefpn-infer --check`, counted
by mutation kind and outcome. Each mutated image is also decoded by Python (data/image.py, PIL, with serve's
pixel limit), and the table counts where the two runtimes disagree.

    python benchmarks/fuzz_cpp.py                         # 400 per kind: 9200 inputs, under a minute on 2 cores
    python benchmarks/fuzz_cpp.py --per-kind 1000 --seed 1

Needs the built siefpn-infer (`siefpn-deploy cpp build`). Prints a markdown table and writes it, with date,
machine and commit, to --report (and the counts to the .json beside it).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))  # the mutators and the --check runner live with the tests

from fuzzing import (
    BAD,
    CRASH,
    HANG,
    OK,
    Batch,
    Mutation,
    Result,
    check_mutations,
    image_mutations,
    meta_mutations,
    seed_images,
    seed_meta,
)

from siefpn_deploy.core.errors import UserError
from siefpn_deploy.core.reporting import markdown_table, write_benchmark_report
from siefpn_deploy.data.image import decode_image
from siefpn_deploy.runtime.cpp import infer_binary
from siefpn_deploy.serve.options import MAX_IMAGE_PIXELS

TOP_REASONS = 12  # refusal reasons listed under the table
KEPT_REASONS = 100  # in the .json: JSON parse errors name a line and column, so most reasons are one of a kind


def python_reads(m: Mutation) -> bool:
    """Whether the Python runtime decodes this image (serve's pixel limit)."""
    try:
        with warnings.catch_warnings():  # PIL warns of damaged EXIF and of sizes past its own bomb limit
            warnings.simplefilter("ignore")
            decode_image(m.data, name=m.name, max_pixels=MAX_IMAGE_PIXELS)
    except UserError:
        return False
    return True


def reason(message: str) -> str:
    """A refusal without the file's name: "image X is WxH, more than ..." -> "more than ..."."""
    text = message.split(": ", 1)[-1] if ": " in message else message
    return text.split(", ", 1)[-1] if " is " in text and "pixels allowed" in text else text


def table_rows(target: str, mutations: list[Mutation], results: dict[str, Result],
               python: dict[str, bool] | None) -> list[list]:
    rows = []
    for kind in dict.fromkeys(m.kind for m in mutations):
        mine = [m for m in mutations if m.kind == kind]
        counts = Counter(results[m.name].status for m in mine)
        row = [target, kind, len(mine), counts[OK], counts[BAD], counts[CRASH], counts[HANG]]
        if python is None:
            row += ["-", "-"]
        else:
            cpp_ok = {m.name: results[m.name].status == OK for m in mine}
            row += [sum(cpp_ok[m.name] and not python[m.name] for m in mine),
                    sum(not cpp_ok[m.name] and python[m.name] for m in mine)]
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-kind", type=int, default=400, help="mutations of each kind of each seed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=500, help="inputs per siefpn-infer process")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per process before it counts as a hang")
    p.add_argument("--report", default="benchmarks/results/cpp_fuzz.md")
    args = p.parse_args()
    infer_binary()  # a one-line error now, when it is not built

    images = image_mutations(seed_images(), args.per_kind, seed=args.seed)
    metas = meta_mutations(seed_meta(), args.per_kind, seed=args.seed)
    batches: list[Batch] = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        image_results = check_mutations(images, Path(tmp) / "images", images=True, batch=args.batch,
                                        timeout=args.timeout, on_batch=batches.append)
        meta_results = check_mutations(metas, Path(tmp) / "metas", images=False, batch=args.batch,
                                       timeout=args.timeout, on_batch=batches.append)
        cpp_s = time.perf_counter() - start
    python = {m.name: python_reads(m) for m in images}

    header = ["input", "mutation", "inputs", "read (0)", "refused (2)", "crash", "hang",
              "C++ reads, Python refuses", "C++ refuses, Python reads"]
    rows = []
    for suffix in (".png", ".jpg", ".webp"):
        mine = [m for m in images if m.name.endswith(suffix)]
        rows += table_rows(suffix[1:].upper(), mine, image_results, python)
    rows += table_rows("meta.json", metas, meta_results, None)
    totals = [sum(r[i] for r in rows if isinstance(r[i], int)) for i in range(2, len(header))]
    rows.append(["all", "", *totals])
    for row in rows:
        print(" | ".join(map(str, row)), flush=True)

    results = {**image_results, **meta_results}
    reasons = Counter(reason(r.message) for r in results.values() if r.status == BAD)
    exits = Counter(b.returncode for b in batches)
    stderr_lines = Counter(len(b.stderr.strip().splitlines()) for b in batches)
    inputs = len(images) + len(metas)
    body = (markdown_table(header, rows) + "\n\n"
            f"{inputs} inputs ({args.per_kind} per mutation kind and seed, seed {args.seed}) in {len(batches)} "
            f"`siefpn-infer --check` processes of up to {args.batch} inputs: {cpp_s:.1f} s, "
            f"{inputs / cpp_s:.0f} inputs/s with the processes' start. Exit codes: "
            f"{', '.join(f'{code}: {n}' for code, n in sorted(exits.items(), key=str))} processes; stderr lines per "
            f"process: {', '.join(f'{k}: {n}' for k, n in sorted(stderr_lines.items()))}. The seeds are a 64x48 "
            "PNG and JPEG carrying an EXIF orientation, a lossy WebP, and a Mask R-CNN meta.json; the pixel limit "
            f"is serve's default ({MAX_IMAGE_PIXELS}) for both runtimes.\n\n"
            "The most common refusals:\n\n" + markdown_table(["refusal", "inputs"], reasons.most_common(TOP_REASONS)))
    write_benchmark_report(args.report, title="C++ reader fuzzing", body=body,
                           command=f"python benchmarks/fuzz_cpp.py {' '.join(sys.argv[1:])}".strip(),
                           data={"header": header, "rows": rows, "seconds": cpp_s, "exit_codes": dict(exits),
                                 "reasons": reasons.most_common(KEPT_REASONS)})


if __name__ == "__main__":
    main()
