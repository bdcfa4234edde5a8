"""fastpath: a userspace Mobile IPv6 home-agent data plane (see README.md)."""
import os as _os

# numpy (the batch arrays) loads OpenBLAS, whose worker threads busy-wait on
# every core; fastpath never calls BLAS, and on a small box those spinning
# threads steal the forwarding workers' CPU. Keep it to one thread unless the
# operator says otherwise.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
