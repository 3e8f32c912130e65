"""Train on the built-in digits with two combiners and predict with the result.

    python examples/train.py

fastdist starts worker processes that re-import this file, so everything that runs
must sit under ``if __name__ == "__main__":`` (or in a function called from there).
"""

import fastdist


def main() -> None:
    for combiner in ("grad_avg", "weight_avg"):
        result = fastdist.train([f"combiner={combiner}"], workers=2, epochs=5, progress="off")
        print(f"{combiner}: test accuracy {result.metrics['test_accuracy']:.4f}")

    # The combined model predicts on rows preprocessed like the dataset's own.
    data = fastdist.load_dataset(fastdist.compose().dataset)
    predicted = result.predict(data.x_test[:10])
    print("predicted:", predicted.tolist(), "true:", data.y_test[:10].tolist())

    # The learning curve: one row per history.every steps, scores once per epoch.
    last = [row for row in result.history if row["test_accuracy"] is not None][-1]
    print(f"history: {len(result.history)} rows, last scored at step {last['step']}")


if __name__ == "__main__":
    main()
