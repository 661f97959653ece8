"""What pylstm says about its CUDA backend on a machine without one: decided by facts (is the
module built, does it load, which library is missing), each case staged in a fresh interpreter."""

import os
import subprocess
import sys
import tempfile
import textwrap

# A finder in place of the path finder: "absent" hides pylstm._cuda (a build without it);
# "nolib" makes it fail the way the loader fails on a missing shared library.
PRELUDE = textwrap.dedent("""
    import importlib.abc, importlib.machinery, sys
    MODE = sys.argv[1]
    class Loader(importlib.abc.Loader):
        def create_module(self, spec):
            raise ImportError("libcublas.so.13: cannot open shared object file: No such file or directory")
        def exec_module(self, module):
            pass
    class Finder(importlib.abc.MetaPathFinder):  # stands in for the path finder
        def find_spec(self, name, path=None, target=None):
            if name == "pylstm._cuda":
                return None if MODE == "absent" else importlib.machinery.ModuleSpec(name, Loader())
            return importlib.machinery.PathFinder.find_spec(name, path, target)
    sys.meta_path = [Finder()] + [f for f in sys.meta_path if f is not importlib.machinery.PathFinder]
    import pylstm
    print(pylstm.cuda_status()[1])
""")


def status(mode):
    r = subprocess.run([sys.executable, "-c", PRELUDE, mode], capture_output=True, text=True,
                       cwd=tempfile.gettempdir(), env=dict(os.environ, PYTHONWARNINGS="error"), timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_a_build_without_the_cuda_module_says_so_and_how_to_rebuild():
    why = status("absent")
    assert why.startswith("pylstm was built without its CUDA module"), why
    assert "PYLSTM_CUDA=ON pip install ." in why


def test_a_missing_cuda_library_is_named_with_the_extra_that_installs_it():
    why = status("nolib")
    assert "libcublas.so.13" in why and "pip install 'pylstm[cuda]'" in why, why
    assert "circular import" not in why
