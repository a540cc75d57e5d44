"""MATLAB-named functions for porting Deep Learning Toolbox code.

Each function here has MATLAB's name and MATLAB's argument names and returns
the same objects as its Python-named counterpart::

    from fmtarray.matlab import convolution2dLayer, dlarray
    layer = convolution2dLayer(3, 16, Padding="same")          # name=value ...
    layer = convolution2dLayer(11, 96, "Stride", 4)           # ... or MATLAB's pairs
    X = dlarray(images, "SSCB")

Option names are matched case-insensitively, as MATLAB does.  Weights saved from
MATLAB load directly: ``W`` (``h×w×C×F``) and ``b`` (``1×1×F``) read with
``scipy.io.loadmat`` go straight into ``Weights=``/``Bias=``.

One module per family: ``_core`` (``dlarray``, ``dlconv``, the seed's layers,
``dlnetwork``, training), ``_graph`` (layer graphs), ``_transposed``, ``_cnn`` (the
CNN layer family), ``_functions`` (custom training loops: ``dlfeval``, ``dlgradient``,
the solver updates), ``_dataops`` (their data and loss functions: ``onehotencode``,
``crossentropy``, ``mean``…), ``_matfile`` (``.mat``).  Add new MATLAB names to the
matching module (its ``__all__``) and to the name table in ``docs/matlab.md`` (a test
checks that every name is there).
"""

from ._core import *  # noqa: F401,F403
from ._graph import *  # noqa: F401,F403
from ._transposed import *  # noqa: F401,F403
from ._cnn import *  # noqa: F401,F403
from ._functions import *  # noqa: F401,F403
from ._dataops import *  # noqa: F401,F403
from ._matfile import *  # noqa: F401,F403
from . import _cnn, _core, _dataops, _functions, _graph, _matfile, _transposed

__all__ = [*_core.__all__, *_graph.__all__, *_transposed.__all__, *_cnn.__all__,
           *_functions.__all__, *_dataops.__all__, *_matfile.__all__]
