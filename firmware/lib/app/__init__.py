"""The node's application. On a 64K heap the imported code is most of what is allocated, so code
that runs rarely (config checks, command handling) is imported when needed and dropped after."""

import gc
import sys


def drop(*names):
    """Forget modules so their code can be collected; the next import loads them again."""
    for name in names:
        sys.modules.pop(name, None)
        pkg, _, sub = name.rpartition(".")
        if pkg in sys.modules and hasattr(sys.modules[pkg], sub):
            delattr(sys.modules[pkg], sub)
    gc.collect()
