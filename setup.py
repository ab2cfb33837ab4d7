"""Build of the compiled core.

Every Cython compiler directive and C flag lives here, in one place.
``FASTRPC_DEBUG=1`` builds with bounds checks, wraparound checks and line tracing
(for debugging and for coverage of the .pyx); the default is the fast build.
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FASTRPC_DEBUG", "") not in ("", "0")

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

extensions = [
    Extension(
        "fastrpc._core",
        ["fastrpc/_core.pyx"],
        include_dirs=["fastrpc"],
        define_macros=macros,
        extra_compile_args=cflags + ["-Wno-unused-function"],
    ),
    Extension(
        "fastrpc._clientcall",
        ["fastrpc/_clientcall.pyx"],
        define_macros=macros,
        extra_compile_args=cflags + ["-Wno-unused-function"],
    ),
    Extension(
        "fastrpc._fastcall",
        ["fastrpc/_fastcall.pyx"],
        define_macros=macros,
        extra_compile_args=cflags + ["-Wno-unused-function"],
    ),
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        annotate=False,
        force=DEBUG,
    )
)
