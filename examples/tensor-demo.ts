// A first look at tensors and autograd (the MNIST example replaces this as `npm start`).
import { tensor, randn, tidy, liveTensors, libtorch } from "../ts/index.js";

console.log(`libtorch from ${libtorch.source}: ${libtorch.dir}`);
const x = tensor([[1, 2], [3, 4]], { dtype: "float32" });
const w = randn([2, 2]);
w.requiresGrad = true;
const loss = tidy(() => x.matmul(w).relu().sum());
loss.backward();
console.log("x =", x.toArray());
console.log("loss =", loss.item());
console.log("dloss/dw =", w.grad?.toArray());
console.log("live tensors:", liveTensors());
