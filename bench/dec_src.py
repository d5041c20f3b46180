"""cider's decode kernels' CUDA text (core/cpp/gpu_decode_src.h) as the bench
scripts run it: the device code and each kernel's call line, cut out of the
C++ header the shim compiles, so a script runs the very same text.
CIDER_DEC_SRC=FILE reads another copy (a variant under test)."""
import os
import re
import struct

DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "core", "cpp", "gpu_decode_src.h")


def text(path=None):
    """The header's text: `path`, else CIDER_DEC_SRC, else the repository's."""
    return open(path or os.environ.get("CIDER_DEC_SRC") or DEFAULT).read()


def parse(src):
    """(device code, {kCider...Call name: call line}) of a header's text."""
    (device,) = re.findall(r'R"CUDA\((.*?)\)CUDA"', src, re.S)
    calls = {k: "".join(re.findall(r'"([^"]*)"', v)) for k, v in re.findall(r'(kCider\w+Call) =\s*((?:"[^"]*"\s*)+);', src)}
    return device, calls


def fbits(f):
    """A float32's bits as an int (how the kernels take float template arguments)."""
    return struct.unpack("<i", struct.pack("<f", f))[0]
