import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from labkit import plots  # noqa: E402


def test_adversarial_grid_marks_wrong_predictions_in_red():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    x = torch.rand(4, 1, 4, 4)
    with torch.no_grad():
        predicted = model(x).argmax(1)
    y = predicted.clone()
    y[0] = (predicted[0] + 1) % 3  # the first column's prediction is wrong
    fig = plots.adversarial_grid(model, x, y, (x + 0.1).clamp(0, 1), eps=0.1, title="t")
    axes = fig.axes
    assert len(axes) == 12
    assert axes[0].title.get_color() == "red" and axes[1].title.get_color() == "black"
    assert axes[0].get_ylabel() == "clean" and axes[4].get_ylabel() == "ε = 0.1"
    plt.close(fig)


def test_accuracy_curves_draw_every_series():
    fig = plots.accuracy_curves({"a": ([0, 0.1], [1.0, 0.5]), "b": ([0, 0.1], [1.0, 0.9])},
                                points={"pgd": (0.1, 0.3)})
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels == ["a", "b", "pgd"]
    plt.close(fig)
