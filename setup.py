"""Build the Cython engine (fastpath/core/*.pyx).

libcrypto is found with pkg-config; intel-ipsec-mb (Debian libipsec-mb-dev) is
linked when its header is present, and the build works without it
(FASTPATH_IPSECMB=0 forces it off, =1 makes its absence an error)."""
import os
import shutil
import subprocess
import sys

from setuptools import Extension, setup


def pkg_config(*args):
    if not shutil.which("pkg-config"):
        return []
    try:
        out = subprocess.run(["pkg-config", *args, "libcrypto"], check=True,
                             capture_output=True, text=True).stdout
    except subprocess.CalledProcessError:
        return []
    return out.split()


def find_ipsecmb():
    want = os.environ.get("FASTPATH_IPSECMB", "auto")
    if want == "0":
        return False
    for inc in ("/usr/include", "/usr/local/include"):
        if os.path.exists(os.path.join(inc, "intel-ipsec-mb.h")):
            return True
    if want == "1":
        sys.exit("FASTPATH_IPSECMB=1 but intel-ipsec-mb.h was not found "
                 "(apt-get install libipsec-mb-dev)")
    print("fastpath: intel-ipsec-mb not found; building the OpenSSL backend only",
          file=sys.stderr)
    return False


cflags = [f for f in pkg_config("--cflags") if f.startswith("-I")]
libs = pkg_config("--libs") or ["-lcrypto"]
lib_dirs = [f[2:] for f in libs if f.startswith("-L")]
lib_names = [f[2:] for f in libs if f.startswith("-l")] or ["crypto"]
macros = [("OPENSSL_API_COMPAT", "0x10100000L"), ("OPENSSL_SUPPRESS_DEPRECATED", "1")]
if find_ipsecmb():
    macros.append(("FP_HAVE_IPSECMB", "1"))
    lib_names.append("IPSec_MB")

import numpy  # noqa: E402  (build requirement, pyproject.toml)

inc_dirs = ["fastpath/core/includes", numpy.get_include()] + [f[2:] for f in cflags]
compile_args = ["-O2", "-Wno-deprecated-declarations", "-Wno-unused-function"]
if os.environ.get("FASTPATH_NATIVE") == "1":
    compile_args.append("-march=native")

modules = ["batch", "esp", "sad", "engine", "offload", "worker"]
extensions = [
    Extension(f"fastpath.core.{m}", [f"fastpath/core/{m}.pyx"],
              include_dirs=inc_dirs, library_dirs=lib_dirs, libraries=lib_names,
              define_macros=macros + [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")], extra_compile_args=compile_args)
    for m in modules
]

from Cython.Build import cythonize  # noqa: E402  (after the pure-Python set-up)

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3", "boundscheck": False,
                             "wraparound": False, "cdivision": True,
                             "initializedcheck": False},
        annotate=os.environ.get("FASTPATH_ANNOTATE") == "1",
    ),
)
