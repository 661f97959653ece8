"""CI check of the source distribution's file list: what a user's runs and builds leave in the
tree (the default run directory, checkpoints, virtual environments, build folders) stays out;
what building needs is in. Usage: python .ci/check_sdist.py dist/pylstm-*.tar.gz"""

import sys
import tarfile

names = [n.split("/", 1)[1] for n in tarfile.open(sys.argv[1]).getnames() if "/" in n]
bad = [n for n in names if n.startswith(("pylstm-run/", "build/", ".venv/", ".ci-venv/", "venv/"))
       or n.endswith(".npz") or "__pycache__" in n]
need = ["CMakeLists.txt", "pyproject.toml", "README.md", "LICENSE", "csrc/cpu/sequence.cpp", "pylstm/__init__.py",
        "pylstm/data/tinyshakespeare.txt.xz"]
missing = [n for n in need if n not in names]
print(f"sdist: {len(names)} files; unwanted: {bad[:10]}; missing: {missing}")
sys.exit(1 if bad or missing else 0)
