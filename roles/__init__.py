"""pyinfra packaged deploys, one per role: they decide what goes on which host.

How a unit, a program or a config file looks is in templates/; what each component
runs is in provision/components.py.
"""
