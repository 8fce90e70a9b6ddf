// kafkajs 2.2 (pure JavaScript), unmodified, against Spool's Kafka listener:
//
// - admin: create a topic of 2 partitions with retention.ms, be refused a second create
//   (TOPIC_ALREADY_EXISTS, which kafkajs answers with false), describe its configs, grow a
//   scratch topic from 1 partition to 3 and delete it;
// - an idempotent producer sends 100 records with keys and headers, gzip-compressed, and gets
//   contiguous offsets per partition;
// - a consumer group (groupId given) consumes them all from the beginning, byte for byte, at
//   contiguous offsets, and commits: the group's committed offsets are the partitions' ends.
//
// Usage: node kafkajs_roundtrip.js HOST:PORT TOPIC. Run by tests/kafkajs.rs.

const { Kafka, CompressionTypes, logLevel } = require("kafkajs");

const [broker, topic] = process.argv.slice(2);
const COUNT = 100;

function check(condition, message) {
  if (!condition) {
    throw new Error(message);
  }
}

async function consumeAll(kafka, groupId, expected, waitMs) {
  const consumer = kafka.consumer({ groupId, sessionTimeout: 10000, heartbeatInterval: 500 });
  await consumer.connect();
  await consumer.subscribe({ topics: [topic], fromBeginning: true });
  const received = [];
  let done;
  const finished = new Promise((resolve) => (done = resolve));
  await consumer.run({
    autoCommit: true,
    eachMessage: async ({ partition, message }) => {
      received.push({ partition, offset: message.offset, key: message.key.toString(),
        value: message.value.toString(), header: message.headers.n.toString() });
      if (received.length === expected) {
        done();
      }
    },
  });
  await Promise.race([finished, new Promise((resolve) => setTimeout(resolve, waitMs))]);
  await consumer.disconnect();
  return received;
}

async function main() {
  const kafka = new Kafka({ clientId: "spool-kafkajs", brokers: [broker], logLevel: logLevel.NOTHING });
  const admin = kafka.admin();
  await admin.connect();
  const created = await admin.createTopics({
    topics: [{ topic, numPartitions: 2, configEntries: [{ name: "retention.ms", value: "86400000" }] }],
  });
  check(created === true, `createTopics answered ${created}`);
  // kafkajs answers a create of a topic that exists with false (it reads TOPIC_ALREADY_EXISTS
  // as "nothing to do").
  const again = await admin.createTopics({ topics: [{ topic, numPartitions: 2 }] });
  check(again === false, `a second create answered ${again}, not false`);
  const described = await admin.describeConfigs({
    resources: [{ type: 2, name: topic, configNames: ["retention.ms"] }],
    includeSynonyms: false,
  });
  const retention = described.resources[0].configEntries.find((e) => e.configName === "retention.ms");
  check(retention && retention.configValue === "86400000", `retention.ms: ${JSON.stringify(retention)}`);
  await admin.createTopics({ topics: [{ topic: `${topic}-scratch`, numPartitions: 1 }] });
  await admin.createPartitions({ topicPartitions: [{ topic: `${topic}-scratch`, count: 3 }] });
  const grown = await admin.fetchTopicMetadata({ topics: [`${topic}-scratch`] });
  check(grown.topics[0].partitions.length === 3, `grown: ${JSON.stringify(grown)}`);
  await admin.deleteTopics({ topics: [`${topic}-scratch`] });
  const listed = await admin.listTopics();
  check(listed.includes(topic) && !listed.includes(`${topic}-scratch`), `topics: ${listed}`);
  await admin.disconnect();
  console.log("admin: created, duplicate refused, described, grown, deleted");

  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  const sent = new Map();
  for (let batch = 0; batch < 10; batch++) {
    const messages = [];
    for (let i = batch * 10; i < batch * 10 + 10; i++) {
      messages.push({ key: `key-${i}`, value: `value ${i} `.repeat(20), headers: { n: `${i}` } });
    }
    const answers = await producer.send({ topic, acks: -1, compression: CompressionTypes.GZIP, messages });
    for (const answer of answers) {
      check(answer.errorCode === 0, `produce answer ${JSON.stringify(answer)}`);
    }
    // Keys hash to partitions; the offsets are contiguous per partition.
    for (const m of messages) {
      sent.set(m.key, m);
    }
  }
  await producer.disconnect();
  console.log(`produced ${sent.size} records`);

  const received = await consumeAll(kafka, `${topic}-group`, COUNT, 60000);
  check(received.length === COUNT, `consumed ${received.length} of ${COUNT}`);
  const perPartition = new Map();
  for (const r of received) {
    const m = sent.get(r.key);
    check(m && m.value === r.value && m.headers.n === r.header, `record ${r.key} differs`);
    const offsets = perPartition.get(r.partition) || [];
    offsets.push(Number(r.offset));
    perPartition.set(r.partition, offsets);
  }
  for (const [partition, offsets] of perPartition) {
    offsets.forEach((offset, i) => check(offset === i, `partition ${partition}: offsets ${offsets}`));
  }
  console.log(`consumed ${COUNT} records in a group, identical, offsets contiguous`);

  const admin2 = kafka.admin();
  await admin2.connect();
  const committed = await admin2.fetchOffsets({ groupId: `${topic}-group`, topics: [topic] });
  await admin2.disconnect();
  for (const { partition, offset } of committed[0].partitions) {
    const count = (perPartition.get(partition) || []).length;
    check(Number(offset) === count, `partition ${partition}: committed ${offset}, consumed ${count}`);
  }
  console.log("the group committed the end of every partition");
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
