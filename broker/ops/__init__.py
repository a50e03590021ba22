"""`unifork cluster`: the KVM hosts of an Ansible inventory, operated over
SSH (Fabric): status side by side, drain, undrain, logs, restart.

inventory.py reads the inventory (no Ansible needed), remote.py runs
commands on a host as the hosts' contract lays them out, commands.py is
what each subcommand does and prints.
"""
