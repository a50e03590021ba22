"""A job's files: its tree (tree.py), the open file descriptions its
processes share (descriptions.py), and the FILE requests that reach them
(calls.py for paths, io.py for descriptors; linux.py packs what Linux's
system calls return)."""
