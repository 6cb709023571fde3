"""Plain-PyTorch versions of every c2rope op, float64-capable, for tests and as the
readable definition of what the kernels compute. Slow by design: clarity first."""
from .rotary import *  # noqa: F401,F403
from .mask import *  # noqa: F401,F403
from .positions import *  # noqa: F401,F403
