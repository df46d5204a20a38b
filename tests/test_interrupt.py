"""A stopped command (Ctrl-C, or SIGTERM from a scheduler or `timeout`) ends with one clear line and 128 + signal.

Lightning turns an interrupt inside ``fit`` into ``sys.exit(1)`` and its own SIGTERM handling into ``SystemExit``
with status 0, so without care a killed training run could look like a success to a shell script.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    from stguide import cli

    SIG, LIGHTNING = signal.{sig}, {lightning}

    def work(args):
        if not LIGHTNING:
            os.kill(os.getpid(), SIG)
            time.sleep(30)
        else:
            import lightning.pytorch as L
            import torch

            class Tiny(L.LightningModule):
                def __init__(self):
                    super().__init__()
                    self.lin = torch.nn.Linear(2, 1)

                def training_step(self, batch, i):
                    return self.lin(batch[0]).pow(2).mean()

                def configure_optimizers(self):
                    return torch.optim.SGD(self.parameters(), lr=0.1)

            class StopAt3(L.Callback):
                def on_train_batch_end(self, trainer, *a):
                    if trainer.global_step == 3:
                        os.kill(os.getpid(), SIG)

            data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=2)
            L.Trainer(max_epochs=10_000, callbacks=[StopAt3()], accelerator="cpu", logger=False,
                      enable_checkpointing=False, enable_progress_bar=False).fit(Tiny(), data)
        print("FINISHED")

    cli.cmd_report = work  # `stguide report` is the command that runs `work`
    sys.exit(cli.main(["report", "unused"]))
""")


@pytest.mark.parametrize("sig,lightning", [("SIGTERM", True), ("SIGINT", True), ("SIGTERM", False)])
def test_stopped_command_says_so_and_exits_128_plus_signal(sig, lightning, tmp_path):
    script = tmp_path / "stop.py"
    script.write_text(SCRIPT.format(sig=sig, lightning=lightning))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 128 + getattr(signal, sig), proc.stderr
    assert "FINISHED" not in proc.stdout
    assert f"stopped by {sig}" in proc.stderr
    assert "Traceback" not in proc.stderr
