"""llama.cpp's own tools from the sources that the llama-cpp-python sdist vendors.

`convert_hf_to_gguf.py` is what wrote the MobileLLM-R1 GGUFs found on the hub (a `llama4`
file with zero experts), so the tests make their broken files with it. The sdist is
fetched once from the package registry with pip and cached (MLLM_CPU_TEST_CACHE or
~/.cache/mllm-cpu-tests); only the converter, its `conversion` package and gguf-py are
kept. The converter runs in a subprocess with its own gguf-py first on the path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
_MEMBERS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")

# The converter names a BPE pre-tokenizer by hashing its tokenization of a fixed text; the
# tiny test tokenizer (Llama 3's split pattern, a small vocabulary) has no registered hash.
# This answers that one question (as the converter answers it for the real Llama-3 vocabulary
# of MobileLLM-R1: "smaug-bpe"); everything else, the tensors included, is the converter's own.
_WRAPPER = """
import runpy, sys
sources, pre = sys.argv[1:3]
sys.path[:0] = [sources + "/gguf-py", sources]
import conversion.base
conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
sys.argv = [sources + "/convert_hf_to_gguf.py", *sys.argv[3:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def cache_dir() -> Path:
    """Where downloaded test tools are kept between runs."""
    return Path(os.environ.get("MLLM_CPU_TEST_CACHE") or Path.home() / ".cache" / "mllm-cpu-tests")


def llama_cpp_sources() -> Path:
    """The folder holding convert_hf_to_gguf.py, conversion/ and gguf-py/ (fetched once)."""
    target = cache_dir() / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}"
    if (target / "convert_hf_to_gguf.py").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}",
                "-d",
                scratch,
            ],
            check=True,
            timeout=900,
        )
        (sdist,) = Path(scratch).glob("llama_cpp_python-*.tar.gz")
        staging = Path(scratch) / "sources"
        prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/"
        with tarfile.open(sdist) as archive:
            for member in archive.getmembers():
                relative = member.name.removeprefix(prefix)
                if member.name.startswith(prefix) and relative.startswith(_MEMBERS) and member.isfile():
                    member.name = relative
                    archive.extract(member, staging, filter="data")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    return target


def convert_with_llama_cpp(checkpoint: Path, outfile: Path, outtype: str, pre_tokenizer: str = "smaug-bpe") -> Path:
    """Run llama.cpp's convert_hf_to_gguf.py on a checkpoint folder (outtype f32, f16, q8_0, ...).

    `pre_tokenizer` is the BPE pre-tokenizer name the converter records for the tiny tokenizer.
    """
    subprocess.run(
        [
            sys.executable,
            "-c",
            _WRAPPER,
            str(llama_cpp_sources()),
            pre_tokenizer,
            str(checkpoint),
            "--outtype",
            outtype,
            "--outfile",
            str(outfile),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return outfile
