"""Compatibility check, not run in CI (it installs CPU torch, Lightning and transformers, ~1 GB):
PyTorch Lightning's MLFlowLogger(log_model="all") and the HuggingFace Trainer with
HF_MLFLOW_LOG_ARTIFACTS=1 train tiny models (built from configs, no downloads) against a live
mlboard, and what they logged is read back from mlboard's database.

    .venv/bin/python tests/compat/lightning_hf.py

Uses a throw-away SQLite database unless DATABASE_URL is set, and a venv built from
the pins `compat-torch` in pyproject.toml (cached under MLBOARD_CLIENT_VENV_DIR). Exit status 0 when
both frameworks finished and everything they logged is stored.
"""

from __future__ import annotations

import os
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
os.environ.setdefault("ARTIFACT_ROOT", tempfile.mkdtemp(prefix="mlboard-compat-artifacts-"))
import _bootstrap  # noqa: F401  (Django set up on a throw-away database)
from django.core.management import call_command
from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
from django.core.wsgi import get_wsgi_application
from django.db.models import Count

from experiments.models import ArtifactFile, LoggedModel, Run, User
from experiments.services.boards import membership_set, team_create
from experiments.services.tokens import token_create
from tests.client_venv import ensure_venv, run_script

PORT = int(os.environ.get("COMPAT_PORT", "18210"))

LIGHTNING = """
import torch, lightning as L
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(4, 2)
    def training_step(self, batch, _):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss
    def validation_step(self, batch, _):
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self.net(x), y))
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

torch.manual_seed(0)
data = TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))
logger = MLFlowLogger(experiment_name="compat-lightning", tracking_uri="{uri}", log_model="all")
trainer = L.Trainer(max_epochs=2, logger=logger, callbacks=[ModelCheckpoint(dirpath="{out}", monitor="val_loss")],
                    enable_progress_bar=False, accelerator="cpu", default_root_dir="{out}")
trainer.fit(Tiny(), DataLoader(data, batch_size=16), DataLoader(data, batch_size=32))
print("RUN", logger.run_id)
"""

# mlflow.pytorch.autolog() on a plain Lightning Trainer (no MLFlowLogger): the trial saw it finish
# "successfully" with training metrics missing. Epoch-level metrics, one point per epoch, and the model.
PYTORCH_AUTOLOG = LIGHTNING.split("torch.manual_seed(0)")[0] + """
import mlflow
mlflow.set_experiment("compat-pytorch-autolog")
mlflow.pytorch.autolog(log_every_n_epoch=1, log_models=True)
torch.manual_seed(0)
data = TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))
trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    accelerator="cpu", default_root_dir="{out}")
with mlflow.start_run() as run:
    trainer.fit(Tiny(), DataLoader(data, batch_size=16), DataLoader(data, batch_size=32))
print("RUN", run.info.run_id)
print("EPOCHS", trainer.current_epoch)
"""

HUGGINGFACE = """
import os, torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

class Data(torch.utils.data.Dataset):
    def __len__(self):
        return 32
    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {{"input_ids": torch.randint(0, 100, (8,), generator=g), "labels": torch.tensor(i % 2)}}

config = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=32, max_position_embeddings=16, num_labels=2)
model = BertForSequenceClassification(config)
args = TrainingArguments(output_dir="{out}", num_train_epochs=2, per_device_train_batch_size=8,
                         logging_steps=1, save_strategy="epoch", eval_strategy="epoch", report_to=["mlflow"],
                         use_cpu=True, disable_tqdm=True)
trainer = Trainer(model=model, args=args, train_dataset=Data(), eval_dataset=Data())
trainer.train()
import mlflow
print("RUN", mlflow.last_active_run().info.run_id)
"""


def serve() -> ThreadedWSGIServer:
    httpd = ThreadedWSGIServer(("127.0.0.1", PORT), WSGIRequestHandler, allow_reuse_address=True)
    httpd.set_app(get_wsgi_application())
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def report(name: str, output: str, code: int) -> bool:
    run_id = next((line.split()[1] for line in output.splitlines() if line.startswith("RUN ")), None)
    print(f"== {name}: exit {code}")
    if code != 0 or run_id is None:
        print(output[-4000:])
        return False
    run = Run.objects.get(external_id=run_id)
    metrics = sorted(run.latest_metrics.values_list("key", flat=True))
    points = run.metrics.count()
    models = LoggedModel.objects.filter(source_run=run)
    files = ArtifactFile.objects.filter(run=run).count()
    model_files = sum(
        ArtifactFile.objects.filter(path__contains=f"/models/{m.model_id}/artifacts/").count() for m in models
    )
    warnings = [line for line in output.splitlines() if "WARNING" in line and "mlflow" in line.lower()]
    per_key = dict(run.metrics.values_list("key").annotate(n=Count("id")).values_list("key", "n"))
    print(f"   run {run_id} status {run.status}; {len(metrics)} metric keys, {points} points: "
          + ", ".join(f"{key} ({per_key.get(key, 0)})" for key in metrics))
    print(f"   params {run.params.count()}; run artifact files {files}; logged models {models.count()} "
          f"with {model_files} files; mlflow warnings {len(warnings)}")
    for line in warnings[:10]:
        print(f"   ! {line}")
    return run.status == "FINISHED" and points > 0


def main() -> int:
    call_command("migrate", verbosity=0)
    team = team_create(name="Compat", slug="compat")
    user = User.objects.create_user("compat", password="x")
    membership_set(team=team, user=user, role="member")
    secret = token_create(user=user, name="compat", team=team)[1]
    httpd = serve()
    uri = f"http://127.0.0.1:{PORT}/mlflow"
    python = ensure_venv("compat-torch")
    work = Path(tempfile.mkdtemp(prefix="mlboard-compat-"))
    env = {
        "MLFLOW_TRACKING_URI": uri, "MLFLOW_TRACKING_TOKEN": secret, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "HF_HUB_OFFLINE": "1",
        "HF_MLFLOW_LOG_ARTIFACTS": "1", "MLFLOW_EXPERIMENT_NAME": "compat-hf", "HOME": str(work),
        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    }
    ok = True
    for name, script in (
        ("PyTorch Lightning MLFlowLogger(log_model='all')", LIGHTNING.format(uri=uri, out=work / "pl")),
        ("mlflow.pytorch.autolog() on a Lightning Trainer", PYTORCH_AUTOLOG.format(out=work / "autolog")),
        ("HuggingFace Trainer, HF_MLFLOW_LOG_ARTIFACTS=1", HUGGINGFACE.format(out=work / "hf")),
    ):
        result = run_script(python, textwrap.dedent(script), env=env, timeout=1800)
        ok = report(name, result.stdout, result.returncode) and ok
    httpd.shutdown()
    print("RESULT", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
