"""Fine-tuning between pruning rounds continues one stream of batches instead of restarting epoch 0."""

import torch
from torch.utils.data import DataLoader, Dataset

from reid_prune import build_model
from reid_prune.config import load_config
from reid_prune.data import PKSampler
from reid_prune.engine.finetune import BatchStream, StepFinetuner
from reid_prune.jobs.prune import finetune_schedule


class _Indexed(Dataset):
    """(image (3, 64, 32), pid, camid, index) with the index in the pixels' first value."""

    def __init__(self, pids):
        self.pids = pids

    def __len__(self):
        return len(self.pids)

    def __getitem__(self, i):
        image = torch.zeros(3, 64, 32)
        image[0, 0, 0] = i
        return image, self.pids[i], 0, i


def _loader():
    pids = [p for p in range(6) for _ in range(4)]  # 6 identities x 4 images, P=2 x K=2: 3 batches an epoch
    return DataLoader(_Indexed(pids), batch_sampler=PKSampler(pids, 2, 2, seed=3))


def _epoch(loader, epoch):
    loader.batch_sampler.set_epoch(epoch)
    return [batch[3].tolist() for batch in loader]


def test_stream_continues_across_calls_and_into_the_next_epoch():
    loader = _loader()
    expected = _epoch(loader, 0) + _epoch(loader, 1)  # what an uninterrupted run of two epochs reads
    assert expected[:3] != expected[3:]
    stream = BatchStream(_loader(), seed=0)
    got = [b[3].tolist() for b in stream.take(2)] + [b[3].tolist() for b in stream.take(2)]
    got += [b[3].tolist() for b in stream.take(2)]
    assert got == expected and stream.epoch == 1


def test_step_finetuner_trains_on_new_batches_each_call(monkeypatch):
    cfg = load_config(None, ["train.device=cpu", "model.arch=resnet18", "data.height=64", "data.width=32"])
    seen = []
    monkeypatch.setattr("reid_prune.engine.trainer.Trainer.train_step",
                        lambda self, images, pids: seen.append(images[:, 0, 0, 0].long().tolist()) or {})
    model = build_model("resnet18")
    finetune = StepFinetuner(cfg, _loader(), model.build_config, finetune_schedule(cfg, 1))
    finetune(model, 2)
    finetune(model, 2)
    # The second call went on with batches 3 and 4 (the last of epoch 0, the first of epoch 1), not 1 and 2 again.
    assert seen == (_epoch(_loader(), 0) + _epoch(_loader(), 1))[:4]
    assert finetune.steps_done == 4
