"""The reference people run today: Flask + scikit-learn, served by gunicorn.

POST /predict {"features": [5.1, 3.5, 1.4, 0.2]} -> {"prediction": 0}
The estimator is the very one exported to ONNX for model-server (model-server/train/train.py --joblib).
"""

import os

import joblib
from flask import Flask, jsonify, request

model = joblib.load(os.environ["IRIS_JOBLIB"])
app = Flask(__name__)


@app.post("/predict")
def predict():
    features = request.get_json()["features"]
    return jsonify(prediction=int(model.predict([features])[0]))
