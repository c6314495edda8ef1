"""Built-in kinds, one module per API group; importing this registers them all.

Registration order is the order discovery lists groups and resources in (upstream's
group order).
"""
from kubesmith.api.kinds import core  # noqa: F401
from kubesmith.api.kinds import apps  # noqa: F401
from kubesmith.api.kinds import events  # noqa: F401
from kubesmith.api.kinds import authentication  # noqa: F401
from kubesmith.api.kinds import authorization  # noqa: F401
from kubesmith.api.kinds import batch  # noqa: F401
from kubesmith.api.kinds import policy  # noqa: F401
from kubesmith.api.kinds import rbac  # noqa: F401
from kubesmith.api.kinds import scheduling  # noqa: F401
from kubesmith.api.kinds import coordination  # noqa: F401
from kubesmith.api.kinds import discovery  # noqa: F401
