"""The PyTorch side of `bench/peer.py`, run by `.venv-peer/bin/python` (torch,
transformers, timm): the same work as the kerastl recipe, done the way a
PyTorch user would. Reads the data `peer.py` exported, writes one JSON row.

Usage (peer.py runs it; by hand for a look):
    .venv-peer/bin/python bench/_peer_torch.py text DATA.npz MODEL_DIR RESULT.json SETTINGS_JSON
    .venv-peer/bin/python bench/_peer_torch.py image DATA.npz PRESET_DIR RESULT.json SETTINGS_JSON

`deploy.py` runs `latency` (the same network, untrained: latency only) on the
batches it times the exports on:
    .venv-peer/bin/python bench/_peer_torch.py latency BATCHES.npz MODEL_DIR RESULT.json {}
"""

from __future__ import annotations

import copy
import json
import math
import os
import resource
import sys
import tempfile
import time

import numpy as np
import torch


def text(data_path: str, model_dir: str, settings: dict) -> dict:
    """all-MiniLM-L6-v2 fine-tuned by `transformers.Trainer`: dynamic padding,
    AdamW with warm-up and cosine decay, the best epoch kept on validation."""
    import transformers
    from transformers import AutoModel, AutoTokenizer, DataCollatorWithPadding

    data = np.load(data_path)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)  # for padding only: the ids are given
    torch.manual_seed(settings["seed"])

    class MeanPooledClassifier(torch.nn.Module):
        # sentence-transformers' mean pooling, the pooling the kerastl recipe uses
        def __init__(self):
            super().__init__()
            self.encoder = AutoModel.from_pretrained(model_dir)
            self.dropout = torch.nn.Dropout(settings["dropout"])
            self.head = torch.nn.Linear(self.encoder.config.hidden_size, 2)

        def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            logits = self.head(self.dropout(pooled))
            loss = None if labels is None else torch.nn.functional.cross_entropy(logits, labels)
            return {"loss": loss, "logits": logits}

    def encoded(split: str) -> list[dict]:
        ids, offsets = data[f"{split}_ids"], data[f"{split}_offsets"]
        return [
            {"input_ids": ids[a:b].tolist(), "attention_mask": [1] * int(b - a), "labels": int(y)}
            for a, b, y in zip(offsets[:-1], offsets[1:], data[f"{split}_y"], strict=True)
        ]

    train, validation, test = encoded("train"), encoded("validation"), encoded("test")
    arguments = transformers.TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="peer-text-"),
        per_device_train_batch_size=settings["batch_size"],
        per_device_eval_batch_size=64,
        learning_rate=settings["lr"],
        weight_decay=settings["weight_decay"],
        warmup_steps=float(settings["warmup"]),  # a float below 1: a fraction of the steps
        lr_scheduler_type="cosine",
        num_train_epochs=settings["epochs"],
        seed=settings["seed"],
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        logging_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )

    def accuracy(prediction) -> dict:
        return {
            "accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())
        }

    curve = []  # (seconds of training, validation accuracy) at each validation
    epoch_scores = []  # the epoch ends' scores, which pick the best epoch
    every = settings.get("evaluate_every", 0)
    off_clock = 0.0  # seconds of the extra, in-epoch validations

    class Curve(transformers.TrainerCallback):
        # Every `every` steps inside an epoch (as peer.py's kerastl side), an
        # extra validation, off the clock. What it touches is put back: the
        # best-epoch bookkeeping, and torch's generator (a new evaluation
        # loader draws a seed from it, which would change later dropout
        # masks): the run trains and picks its epochs as without it.
        paused = kept = None

        def on_step_begin(self, args, state, control, **kwargs):
            if self.kept is not None:
                state.best_metric, state.best_global_step, generator = self.kept
                torch.set_rng_state(generator)
                self.kept = None

        def on_step_end(self, args, state, control, **kwargs):
            per_epoch = state.max_steps // args.num_train_epochs
            step = (state.global_step - 1) % per_epoch + 1
            if every and step % every == 0 and step < per_epoch:
                control.should_evaluate = True
                self.paused = time.perf_counter()
                self.kept = state.best_metric, state.best_global_step, torch.get_rng_state()

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            nonlocal off_clock
            now = time.perf_counter()
            if self.paused is None:  # an epoch's end: on the clock
                curve.append((now - start - off_clock, metrics["eval_accuracy"]))
                epoch_scores.append(metrics["eval_accuracy"])
            else:  # training paused for this one: clocked where it paused
                curve.append((self.paused - start - off_clock, metrics["eval_accuracy"]))
                off_clock += now - self.paused
                self.paused = None

    trainer = transformers.Trainer(
        model=MeanPooledClassifier(),
        callbacks=[Curve()],
        args=arguments,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=accuracy,
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start - off_clock
    best = max(epoch_scores)
    test_accuracy = accuracy(trainer.predict(test))["accuracy"]
    return {
        "train_seconds": seconds,
        "last_stage_seconds": seconds,  # one stage: every layer
        "off_clock_seconds": off_clock,
        "rss_gb": _rss_gb(),
        "best": best,
        "curve": curve,
        "test": test_accuracy,
        "latency": _latency(
            trainer.model.eval(),
            lambda n: {
                key: torch.tensor(
                    [t[key] for t in train[:n]] if n == 1 else _padded(train[:n], key)
                )
                for key in ("input_ids", "attention_mask")
            },
        ),
    }


def _padded(rows: list[dict], key: str) -> list[list[int]]:
    width = max(len(row[key]) for row in rows)
    return [row[key] + [0] * (width - len(row[key])) for row in rows]


def image(data_path: str, preset_dir: str, settings: dict) -> dict:
    """EfficientNet-Lite0 in timm (`tf_efficientnet_lite0`: TF "same" padding,
    as the weights were trained), a plain loop: the head on the frozen
    backbone, then the top blocks at spread rates; random dihedral views,
    balanced class weights, the best epoch kept on validation."""
    import timm
    from safetensors.torch import load_file

    torch.manual_seed(settings["seed"])
    data = np.load(data_path)
    model = timm.create_model(
        "tf_efficientnet_lite0", pretrained=False, num_classes=2, drop_rate=settings["dropout"]
    )
    weights = {k: v for k, v in load_file(os.path.join(preset_dir, "model.safetensors")).items()}
    weights = {k: v for k, v in weights.items() if not k.startswith("classifier.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or set(missing) != {"classifier.weight", "classifier.bias"}:
        raise RuntimeError(f"Lite0 weights do not fit timm: {missing} {unexpected}")

    def tensors(split: str):
        x = torch.from_numpy(data[f"{split}_x"]).permute(0, 3, 1, 2).contiguous()
        return x, torch.from_numpy(data[f"{split}_y"].astype("int64"))

    train, validation, test = tensors("train"), tensors("validation"), tensors("test")
    counts = torch.bincount(train[1], minlength=2).double()
    class_weight = (counts.sum() / (2 * counts)).float()
    generator = torch.Generator().manual_seed(settings["seed"])

    def normalized(x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255 - 0.498) / 0.502

    def dihedral(x: torch.Tensor) -> torch.Tensor:
        views = torch.randint(0, 8, (len(x),), generator=generator)
        out = torch.empty_like(x)
        for view in range(8):
            chosen = views == view
            part = torch.rot90(x[chosen], view % 4, dims=(2, 3))
            out[chosen] = part.flip(3) if view >= 4 else part
        return out

    def predict(x: torch.Tensor) -> torch.Tensor:
        model.eval()
        with torch.no_grad():
            return torch.cat([model(normalized(x[i : i + 64])) for i in range(0, len(x), 64)])

    def balanced_accuracy(x, y) -> float:
        predicted = predict(x).argmax(1)
        return float(np.mean([(predicted[y == c] == c).float().mean() for c in (0, 1)]))

    best = {"value": -1.0, "state": None}
    curve = []  # (seconds since training began, validation score) after each epoch

    def run_stage(stage: dict) -> None:
        for parameter in model.parameters():
            parameter.requires_grad = False
        groups = [model.blocks[5], model.blocks[6], model.conv_head] if stage["top"] else []
        groups.append(model.classifier)
        # fastai's slice, as `lr_mult`: the lowest group at lr / lr_mult, the head at lr
        spread = stage.get("lr_mult") or 1.0
        last = max(len(groups) - 1, 1)
        rates = [stage["lr"] / spread ** ((len(groups) - 1 - i) / last) for i in range(len(groups))]
        parameter_groups = []
        for group, rate in zip(groups, rates, strict=True):
            parameters = [  # BatchNorm stays frozen
                p
                for module in group.modules()
                if not isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
                for p in module.parameters(recurse=False)
            ]
            for p in parameters:
                p.requires_grad = True
            parameter_groups.append({"params": parameters, "lr": rate})
        optimizer = torch.optim.Adam(parameter_groups)
        steps = stage["epochs"] * math.ceil(len(train[0]) / settings["batch_size"])
        warmup = int(stage.get("warmup", 0) * steps)

        def factor(step: int) -> float:
            if not stage.get("schedule"):
                return 1.0
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        loss_function = torch.nn.CrossEntropyLoss(weight=class_weight)
        for _ in range(stage["epochs"]):
            model.train()  # timm's head dropout follows the model's mode ...
            for module in model.modules():  # ... BatchNorm stays in inference mode (recipe)
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()
            order = torch.randperm(len(train[0]), generator=generator)
            for i in range(0, len(order), settings["batch_size"]):
                chosen = order[i : i + settings["batch_size"]]
                x = normalized(dihedral(train[0][chosen]))
                loss = loss_function(model(x), train[1][chosen])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
            value = balanced_accuracy(*validation)
            curve.append((time.perf_counter() - start, value))
            if value > best["value"]:
                best.update(value=value, state=copy.deepcopy(model.state_dict()))

    start = time.perf_counter()
    stage_seconds = []
    for stage in settings["stages"]:
        stage_start = time.perf_counter()
        run_stage(stage)  # validation after each epoch included, as in kerastl's stage times
        stage_seconds.append(time.perf_counter() - stage_start)
    seconds = time.perf_counter() - start
    model.load_state_dict(best["state"])
    predicted = predict(test[0]).argmax(1)
    return {
        "train_seconds": seconds,
        "last_stage_seconds": stage_seconds[-1],
        "rss_gb": _rss_gb(),
        "best": best["value"],
        "curve": curve,
        "test": float((predicted == test[1]).float().mean()),
        "latency": _latency(model.eval(), lambda n: normalized(test[0][:n])),
    }


def _rss_gb() -> float:
    """Peak resident memory so far (before the latency runs compile anything)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _latency(model: torch.nn.Module, batch_of) -> dict:
    """Median milliseconds per call at batch 1 and 32: eager, and torch.compile
    where it compiles on this machine."""
    results = {}
    compiled = None
    try:
        compiled = torch.compile(model)
    except Exception as error:  # recorded in the row, not fatal
        results["compile_error"] = repr(error)[:200]
    for size in (1, 32):
        inputs = batch_of(size)
        for name, function in (("eager", model), ("compile", compiled)):
            if function is None:
                continue
            try:
                results[f"{name}_{size}"] = _median_ms(function, inputs)
            except Exception as error:  # recorded in the row, not fatal
                results[f"{name}_error"] = repr(error)[:200]
    return results


def _median_ms(function, inputs, warmup: int = 3, repeats: int = 20) -> float:
    call = (lambda: function(**inputs)) if isinstance(inputs, dict) else (lambda: function(inputs))
    with torch.no_grad():
        for _ in range(warmup):
            call()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def latency(batches_path: str, model_dir: str, settings: dict) -> dict:
    """Eager and `torch.compile` latency of the recipe's network on `deploy.py`'s
    batches (`images_1`/`images_32` NHWC pixels, or `token_ids_N`/`padding_mask_N`)."""
    del settings
    batches = np.load(batches_path)
    if "images_1" in batches:
        import timm

        model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=2)

        def batch_of(size):
            x = torch.from_numpy(batches[f"images_{size}"]).permute(0, 3, 1, 2).contiguous()
            return (x / 255 - 0.498) / 0.502
    else:
        from transformers import AutoModel

        encoder = AutoModel.from_pretrained(model_dir)

        class MeanPooled(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.encoder, self.head = encoder, torch.nn.Linear(encoder.config.hidden_size, 2)

            def forward(self, input_ids, attention_mask):
                hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                return self.head((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9))

        model = MeanPooled()

        def batch_of(size):
            return {
                "input_ids": torch.from_numpy(batches[f"token_ids_{size}"].astype("int64")),
                "attention_mask": torch.from_numpy(batches[f"padding_mask_{size}"].astype("int64")),
            }

    return {"latency": _latency(model.eval(), batch_of)}


if __name__ == "__main__":
    task, data_path, model_dir, result_path, settings = sys.argv[1:6]
    tasks = {"text": text, "image": image, "latency": latency}
    row = tasks[task](data_path, model_dir, json.loads(settings))
    row["versions"] = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    with open(result_path, "w") as file:
        json.dump(row, file)
