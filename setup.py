"""Ships the CUDA sources in the wheel as ``quantfuse/_csrc`` (they are JIT-built on first GPU use)."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithCsrc(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / "quantfuse" / "_csrc"
        target.mkdir(parents=True, exist_ok=True)
        for src in Path(__file__).parent.joinpath("csrc").iterdir():
            if src.suffix in (".cu", ".cuh", ".cpp", ".h"):
                shutil.copy2(src, target / src.name)


setup(cmdclass={"build_py": BuildPyWithCsrc})
