"""Ray job entry point: train a recipe on a Ray cluster with Ray Train.

    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env cluster/ray/runtime_env.yaml \
        -- python launcher/ray_job.py RECIPE [key=value ...] [--max-failures 3] [--storage-path DIR] [--gpu|--cpu]

(`medscale submit ray RECIPE ...` builds and submits exactly this.) The recipe is validated here first (exit 2
on bad input, before any worker starts), then every worker re-validates it and calls medscale.train.run().
Exit codes: 0 done, 1 Ray Train gave up after --max-failures restarts, 2 bad input, 4 cancelled.
"""
import os
import sys

# Run as a script, Python puts launcher/ first on sys.path, where launcher/ray/ would shadow the `ray`
# package. Put the project root (the job's working dir) there instead, so the uploaded medscale is imported.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    sys.path[0] = _ROOT
elif _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from launcher.ray.driver import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
