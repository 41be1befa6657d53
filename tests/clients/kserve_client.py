"""Run by the KServe client's own virtualenv: infer through ``kserve.InferenceRESTClient``.

usage: python kserve_client.py BASE_URL MODEL INPUT_JSON  -> prints the results as JSON
"""

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


async def main(base_url: str, model: str, rows: list[list[float]]) -> None:
    x = np.asarray(rows, dtype=np.float32)
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    result: dict[str, object] = {
        "live": await client.is_server_live(base_url),
        "ready": await client.is_model_ready(base_url, model),
    }
    for binary in (False, True):
        tensor = InferInput(name="input", shape=list(x.shape), datatype="FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        request = InferRequest(model_name=model, infer_inputs=[tensor], request_id=f"k-{binary}")
        response = await client.infer(base_url, request, model_name=model)
        result["binary" if binary else "json"] = {
            "id": response.id,
            "outputs": {o.name: o.as_numpy().tolist() for o in response.outputs},
        }
    await client.close()
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))
