"""Operator-side library of kubesmith: settings, PKI, kubeconfigs, wheelhouse, lab hosts.

Runs only on the operator's machine; never imported by the components in kubesmith/.
"""
