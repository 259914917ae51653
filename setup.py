"""Build the C core; all other metadata lives in setup.cfg."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "shmchannels.bus._shm",
            # _shm.c is the CPython binding; ring.c the ring algorithm (no Python.h).
            sources=["shmchannels/bus/_shm.c", "shmchannels/bus/ring.c"],
            depends=["shmchannels/bus/ring.h", "shmchannels/bus/shm_layout.h"],
            # -mcx16: the ring cursors move by 16-byte compare-and-swap.
            extra_compile_args=["-O2", "-std=gnu11", "-mcx16", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-Wno-missing-field-initializers", "-Wno-cast-function-type"],
        )
    ]
)
