"""The application layer: the `kerastl` command (`cli`), the run it performs
from a `RunConfig` (`config`, `run`), and the transfer report it adds.

It builds only on the library's public calls; nothing in the library imports it.
"""
