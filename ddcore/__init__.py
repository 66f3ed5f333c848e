"""ddcore: dataset distillation you can read, run in notebooks and reproduce."""

__version__ = "0.1.0"

from .runtime import keep_freed_memory as _keep_freed_memory

# large CPU tensors from the heap instead of fresh pages (see runtime.keep_freed_memory)
MALLOC_TUNED = _keep_freed_memory()
