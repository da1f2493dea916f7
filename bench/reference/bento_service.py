"""The same estimator served by BentoML (1.4 service API), two workers like the gunicorn reference."""

import os

import bentoml
import joblib


@bentoml.service(workers=2)
class Iris:
    def __init__(self) -> None:
        self.model = joblib.load(os.environ["IRIS_JOBLIB"])

    @bentoml.api
    def predict(self, features: list[float]) -> dict:
        return {"prediction": int(self.model.predict([features])[0])}
