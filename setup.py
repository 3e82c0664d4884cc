"""Package discovery for the stage layout: every top-level folder holding an `__init__.py` (other
than tests/ and bench/) is the stage package `clipstore.<folder>`, with its subpackages. Everything
else about the package is in pyproject.toml; tests/test_packaging.py builds the wheel and checks
that each stage is in it."""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
NOT_STAGES = {"clipstore", "tests", "bench", "build", "docs"}


def stage_packages() -> tuple[list[str], dict[str, str]]:
    packages, package_dir = ["clipstore"], {"clipstore": "clipstore"}
    for folder in sorted(p for p in ROOT.iterdir() if (p / "__init__.py").is_file() and p.name not in NOT_STAGES):
        package_dir[f"clipstore.{folder.name}"] = folder.name
        packages.append(f"clipstore.{folder.name}")
        packages += [f"clipstore.{folder.name}.{sub}" for sub in find_packages(str(folder))]
    return packages, package_dir


packages, package_dir = stage_packages()
setup(packages=packages, package_dir=package_dir)
