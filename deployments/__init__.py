import os as _os

# Keep Ray on loopback: Ray reads this when it is imported, so it must be set before any
# `import ray` (see greencache/server.py:start_local_ray).
_os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
