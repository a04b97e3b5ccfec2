// A third-party client that has only proto/tandem.proto: @grpc/grpc-js runs Think.
// Usage: node node_think.js HOST:PORT PATH/TO/tandem.proto
// Prints one JSON line: {"status":0,"finish":"FINISH_...","thought":N,"answer":N,...}
const grpc = require('@grpc/grpc-js');
const loader = require('@grpc/proto-loader');
const [addr, protoPath] = process.argv.slice(2);
const def = loader.loadSync(protoPath,
  { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true });
const tandem = grpc.loadPackageDefinition(def).tandem.v1;
const client = new tandem.Tandem(addr, grpc.credentials.createInsecure());
const out = { status: -1, thought: 0, answer: 0, ids: [] };
const call = client.Think();
call.on('data', (ev) => {
  out.request_id = ev.request_id;
  if (ev.event === 'thought') out.thought += ev.thought.token_ids.length;
  else if (ev.event === 'answer') out.answer += ev.answer.token_ids.length;
  else if (ev.event === 'done') {
    out.finish = ev.done.finish_reason;
    out.usage = ev.done.usage;
    out.waited = ev.done.timings.input_tokens_waited;
  }
});
call.on('error', (e) => { out.status = e.code; out.details = e.details; });
call.on('status', (s) => { if (out.status < 0) out.status = s.code; });
call.on('close', () => { console.log(JSON.stringify(out)); client.close(); });
call.write({ open: { mode: 'MODE_STREAMING', max_tokens: 24, unit_budget: 4,
                     final_budget: 8, request_id: 'node-1' } });
call.write({ input: { text: 'The fox jumps over the dog. ' } });
call.write({ input: { text: 'Where does the fox go?' } });
call.write({ close: {} });
call.end();
