import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig


class Classifier(nn.Module):
    def __init__(self, hidden_size):
        super().__init__()
        self.encoder, self.head = nn.Linear(16, hidden_size), nn.Linear(hidden_size, 3)

    def forward(self, features, labels):  # a tuple batch is passed as model(*batch)
        hidden = torch.tanh(self.encoder(features))  # (batch, hidden_size)
        logits = self.head(hidden)  # (batch, 3)
        return logits, hidden, nn.functional.cross_entropy(logits, labels)


def adaptor(batch, outputs):  # one adaptor serves both models here
    return {"logits": outputs[0], "hidden": [outputs[1]], "losses": outputs[2]}


teacher, student = Classifier(64), Classifier(16)  # in real use the teacher is trained
data = TensorDataset(torch.randn(256, 16), torch.randint(0, 3, (256,)))
dataloader = DataLoader(data, batch_size=32, shuffle=True)  # 8 batches per epoch

train_config = TrainingConfig(device="cpu", output_dir="saved_models")  # default: 'cuda'
match = {"layer_T": 0, "layer_S": 0, "feature": "hidden", "loss": "hidden_mse", "weight": 1}
match["proj"] = ["linear", 16, 64]  # maps the student's 16 features to the teacher's 64
distill_config = DistillationConfig(
    temperature=4, hard_label_weight=0.5, intermediate_matches=[match]
)
distiller = GeneralDistiller(train_config, distill_config, teacher, student, adaptor, adaptor)
optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)

with distiller:
    distiller.train(optimizer, None, dataloader, num_epochs=3)  # saves gs8, gs16, gs24.pkl
