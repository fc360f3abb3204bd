"""The per-site cloud-init seed: render (cloudinit/*.j2), validate, package, deliver.

Example (deploy time, over SSH as root into the running container)::

    seed = render_seed(site, master_key=key, instance_id=f"iid-{uuid4()}", deploy_public_key=pub)
    for path, content, mode in container_files(seed):
        ...  # write content to path with mode, owner root
    ...      # then run ACTIVATE_COMMANDS, then WAIT_COMMAND (exit 0 = finished without errors)
"""

from pipeline.cloudinit.deliver import ACTIVATE_COMMANDS, WAIT_COMMAND, container_files
from pipeline.cloudinit.output import write_seed
from pipeline.cloudinit.render import Seed, render_seed

__all__ = ["ACTIVATE_COMMANDS", "WAIT_COMMAND", "Seed", "container_files", "render_seed", "write_seed"]
