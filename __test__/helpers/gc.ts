// Lets the garbage collector free every unreachable tensor before a test counts live
// tensors: collected handles are finalized on a later turn of the event loop, and a
// collection that happens during a test would otherwise free an earlier test's garbage
// and make the count drop below where it started.
export async function settle(): Promise<void> {
  if (!global.gc) throw new Error("settle: run with --expose-gc");
  for (let i = 0; i < 3; i++) {
    global.gc();
    await new Promise((resolve) => setImmediate(resolve));
  }
}
