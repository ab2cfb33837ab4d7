"""Build of the compiled core.

Every Cython compiler directive and C flag lives here, in one place.
``FASTRPC_DEBUG=1`` builds with bounds checks, wraparound checks and line tracing
(for debugging and for coverage of the .pyx); the default is the fast build.
``FASTRPC_SANITIZE=address`` is that debug build compiled by clang with AddressSanitizer
and libFuzzer's coverage hooks (``-fsanitize=address,fuzzer-no-link``), for ``fuzz/``:
its C files go to ``build/sanitize-c`` so the normal build's generated files are never
overwritten (``fuzz/build.sh`` builds it into a directory of its own).
"""
import os
import shlex
import sysconfig

from Cython.Build import cythonize
from setuptools import Extension, setup

SANITIZE = os.environ.get("FASTRPC_SANITIZE", "")
if SANITIZE not in ("", "address"):
    raise SystemExit(f"FASTRPC_SANITIZE={SANITIZE!r}: only 'address' is supported")
DEBUG = bool(SANITIZE) or os.environ.get("FASTRPC_DEBUG", "") not in ("", "0")

directives = {
    "language_level": 3,
    "embedsignature": True,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "profile": False,
    "linetrace": DEBUG,
    "freethreading_compatible": False,
}

macros = [("CYTHON_TRACE_NOGIL", "1")] if DEBUG else []
cflags = ["-O0", "-g"] if DEBUG else ["-O3"]
ldflags: list[str] = []
if SANITIZE:
    # -fsanitize=fuzzer-no-link: coverage counters for libFuzzer without its main();
    # the ASan+libFuzzer runtime is preloaded at run time (atheris' asan_with_fuzzer.so),
    # so the shared objects link none. -O1: ASan's advice, and a fuzzer wants speed.
    sanitize = "-fsanitize=address,fuzzer-no-link"
    cflags = ["-O1", "-g", "-fno-omit-frame-pointer", sanitize]
    ldflags = [sanitize]
    os.environ["CC"] = os.environ.get("FASTRPC_CLANG", "clang")
    ld = shlex.split(sysconfig.get_config_var("LDSHARED") or "cc -shared")
    os.environ["LDSHARED"] = shlex.join([os.environ["CC"]] + ld[1:])

extensions = [
    Extension(
        "fastrpc._core",
        ["fastrpc/_core.pyx"],
        include_dirs=["fastrpc"],
        define_macros=macros,
        extra_compile_args=cflags + ["-Wno-unused-function"],
        extra_link_args=ldflags,
    ),
    Extension(
        "fastrpc._clientcall",
        ["fastrpc/_clientcall.pyx"],
        define_macros=macros,
        extra_compile_args=cflags + ["-Wno-unused-function"],
        extra_link_args=ldflags,
    ),
    Extension(
        "fastrpc._fastcall",
        ["fastrpc/_fastcall.pyx"],
        define_macros=macros,
        extra_compile_args=cflags + ["-Wno-unused-function"],
        extra_link_args=ldflags,
    ),
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        annotate=False,
        force=DEBUG,
        build_dir="build/sanitize-c" if SANITIZE else None,
    )
)
