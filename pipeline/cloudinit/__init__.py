"""The per-site cloud-init seed: render (cloudinit/*.j2), validate, package, deliver.

Example (deploy time, over SSH as root into the running container)::

    seed = render_seed(site, master_key=key, instance_id=f"iid-{uuid4()}", deploy_public_key=pub)
    ssh.run(["sh", "-s"], input=activation_script(seed))  # exit 0: services started, cloud-init done
"""

from pipeline.cloudinit.deliver import activation_script, container_files
from pipeline.cloudinit.output import write_seed
from pipeline.cloudinit.render import Seed, render_seed

__all__ = ["Seed", "activation_script", "container_files", "render_seed", "write_seed"]
