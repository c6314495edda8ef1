"""kubesmith's cluster components: the packages that run on masters and nodes.

Runs only on hosts, installed from the wheel the deploy ships; never imports the
operator-side `provision` package.
"""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("kubesmith")
except PackageNotFoundError:  # running from a source checkout
    __version__ = "0.0.0+source"
