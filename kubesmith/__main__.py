"""`python -m kubesmith`: print the installed version (the deploy checks the install with it)."""
from kubesmith import __version__

print(f"kubesmith {__version__}")
