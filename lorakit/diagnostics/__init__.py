"""Is this install healthy and current? ``lorakit doctor``, ``version``, ``inspect``.

Nothing here trains: doctor's checks, the installed and tested versions, the release
check against the package index, and reading a LoRA file's header.
"""
