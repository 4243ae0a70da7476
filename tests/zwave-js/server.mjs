// A real Z-Wave JS server (@zwave-js/server) driving the real zwave-js driver, whose serial
// port is an in-memory mock answered by zwave-js's emulated controller. Loopback only, no
// mDNS. Usage: node server.mjs <port> <cacheDir> [<nodeId>]; prints READY once clients may
// connect. With a node id, the emulated controller has a device waiting to be included: the
// next inclusion adds it (a plain node without S2, so the inclusion is a low-security one).
import { MockController } from "@zwave-js/testing";
import { ZwavejsServer } from "@zwave-js/server";
import {
  createAndStartDriverWithMockPort,
  createDefaultMockControllerBehaviors,
} from "zwave-js/Testing";

const [port, cacheDir, pendingNodeId] = process.argv.slice(2);
const quiet = { error: console.error, warn() {}, info() {}, debug() {} };

const { driver, continueStartup, mockPort, serial } = await createAndStartDriverWithMockPort({
  logConfig: { enabled: false },
  storage: { cacheDir, lockDir: `${cacheDir}/locks` },
  securityKeys: {
    S0_Legacy: Buffer.from("0102030405060708090a0b0c0d0e0f10", "hex"),
    S2_Unauthenticated: Buffer.from("11111111111111111111111111111111", "hex"),
    S2_Authenticated: Buffer.from("22222222222222222222222222222222", "hex"),
    S2_AccessControl: Buffer.from("33333333333333333333333333333333", "hex"),
  },
});
const controller = await MockController.create({ mockPort, serial, homeId: 0x7e570001, ownNodeId: 1 });
controller.defineBehavior(...createDefaultMockControllerBehaviors());
if (pendingNodeId) {
  controller.nodePendingInclusion = { id: Number(pendingNodeId), capabilities: {} };
}

let server;
driver.once("driver ready", async () => {
  server = new ZwavejsServer(driver, {
    host: "127.0.0.1",
    port: Number(port),
    enableDNSServiceDiscovery: false,
    logger: quiet,
  });
  await server.start(true);
  console.log("READY");
});
continueStartup();

async function stop() {
  await server?.destroy();
  await driver.destroy();
  process.exit(0);
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
