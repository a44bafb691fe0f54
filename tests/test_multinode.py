"""Two Ray nodes on one machine (Ray's own multi-node test cluster: a head and a second node,
each a separate raylet with one CPU): a DDP run with one worker per node equals a one-worker
run of the same global batch and seed, so the gradients really are synchronised across nodes."""

import pytest
import ray
import torch
from conftest import free_port
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from boxinst.platform.training.loop import (
    CHECKPOINT_FILE,
    build_datasets,
    build_state,
    loaders,
    train_steps,
)
from boxinst.platform.training.ray_train import build_trainer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def two_nodes():
    """A head node and a second node (the head's dashboard, on a free port, serves the state
    API that says where the workers ran)."""
    head = {"num_cpus": 1, "dashboard_port": free_port()}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def spec(tiny_spec, *overrides):
    """Square images of one size (padding cannot differ between a batch of two and two
    batches of one), no batch statistics (the paper's frozen batch norm in the backbone, group
    norm in the mask branch: a worker's batch norm sees only its own images), no sampling of
    mask instances."""
    return tiny_spec(
        "data.synth.min_size=72",
        "data.synth.max_size=72",
        "data.train_short_sizes=[64]",
        "model.backbone_norm=FrozenBN",
        "model.mask_branch_norm=GN",
        "loss.max_mask_instances_per_image=1000",
        "loss.pairwise_warmup_iters=0",
        "solver={ims_per_batch: 2, max_iter: 4, steps: [100], warmup_iters: 1, base_lr: 0.02}",
        "reporting={log_every: 1, checkpoint_every: 100}",
        "evaluation.overlays=0",
        *overrides,
    )


def train_in_process(spec) -> dict[str, torch.Tensor]:
    torch.set_num_threads(1)
    train_set, val_set = build_datasets(spec)
    train_loader, _ = loaders(spec, train_set, val_set)
    state = build_state(spec, torch.device("cpu"))
    train_steps(spec, state, train_loader, spec.solver.max_iter)
    return state.model.state_dict()


def largest_difference(a: dict, b: dict) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_two_workers_on_two_nodes_equal_one_worker_with_the_same_global_batch(
    two_nodes, tiny_spec, tmp_path
):
    two = spec(
        tiny_spec,
        "resources={num_workers: 2, cpus_per_worker: 1, placement_strategy: STRICT_SPREAD}",
    )
    result = build_trainer(two, tmp_path / "runs", "two-nodes").fit()
    assert result.error is None and result.metrics["iteration"] == 4
    workers = list_actors(filters=[("class_name", "=", "RayTrainWorker")], detail=True)
    nodes = {node["NodeID"] for node in ray.nodes()}
    assert len(nodes) == 2 and {w.node_id for w in workers} == nodes  # one worker per node
    with result.checkpoint.as_directory() as folder:
        distributed = torch.load(f"{folder}/{CHECKPOINT_FILE}", weights_only=True)["model"]

    one_worker = train_in_process(spec(tiny_spec))  # the same 2 images per step, in one batch
    half_batch = train_in_process(spec(tiny_spec, "solver.ims_per_batch=1"))  # rank 0's alone
    initial = build_state(spec(tiny_spec), torch.device("cpu")).model.state_dict()

    trained = largest_difference(one_worker, initial)
    unsynchronised = largest_difference(half_batch, one_worker)
    assert trained > 1e-3 and unsynchronised > 1e-3  # the check below can tell them apart
    difference = largest_difference(distributed, one_worker)
    print(f"largest weight difference: {difference=:.3g} {trained=:.3g} {unsynchronised=:.3g}")
    assert difference < 1e-5
