"""An independent MQTT 5 client (Eclipse paho-mqtt) against meterflow: reason codes, the
CONNACK's properties, content type, QoS 2, receive-maximum back-pressure and the server's
DISCONNECT at shutdown. Driven by tests/it/mqtt_paho.rs, which checks what arrived.

Usage: mqtt5_paho.py PORT METER_ID SECRET OTHER_METER_ID
Prints one line READY when the last client waits for the server to stop, then one JSON
object with everything it saw.
"""

import json
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

PORT, METER, SECRET, OTHER = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
seen = {}


def code(rc):
    return rc.value if hasattr(rc, "value") else int(rc)


def client(client_id, username=None, password=None):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if username is not None:
        c.username_pw_set(username, password)
    return c


def connect_code(username, password):
    """The CONNACK reason code for these credentials."""
    done = threading.Event()
    got = {}

    def on_connect(c, userdata, flags, rc, properties):
        got["rc"] = code(rc)
        done.set()

    c = client("probe-" + str(username), username, password)
    c.on_connect = on_connect
    c.connect("127.0.0.1", PORT, keepalive=30)
    c.loop_start()
    done.wait(30)
    c.disconnect()
    c.loop_stop()
    return got.get("rc")


seen["bad_secret"] = connect_code(METER, "wrong-wrong-wrong-wrong")
seen["no_credentials"] = connect_code(None, None)

# The meter's own session.
connected = threading.Event()
acks = {}
acks_lock = threading.Lock()
subacks = {}
subscribed = threading.Event()


def on_connect(c, userdata, flags, rc, properties):
    seen["connack"] = code(rc)
    seen["receive_maximum"] = getattr(properties, "ReceiveMaximum", None)
    seen["maximum_packet_size"] = getattr(properties, "MaximumPacketSize", None)
    seen["wildcard_subscriptions"] = getattr(properties, "WildcardSubscriptionAvailable", None)
    connected.set()


def on_publish(c, userdata, mid, rc, properties):
    with acks_lock:
        acks[mid] = code(rc)


def on_subscribe(c, userdata, mid, rcs, properties):
    subacks[mid] = [code(r) for r in rcs]
    if len(subacks) == 2:
        subscribed.set()


def on_disconnect(c, userdata, flags, rc, properties):
    seen["disconnect"] = code(rc)


c = client(METER, METER, SECRET)
c.max_inflight_messages_set(1000)  # more than the server's receive maximum, on purpose
c.on_connect, c.on_publish, c.on_subscribe, c.on_disconnect = on_connect, on_publish, on_subscribe, on_disconnect
c.connect("127.0.0.1", PORT, keepalive=30)
c.loop_start()
assert connected.wait(30), "no CONNACK"

report = lambda v: json.dumps({"readings": [{"channel": "1-0:1.8.0", "ts": 1709294400000 + v * 1000, "value": v, "unit": "kWh"}]})

# Content type wins over the topic suffix: the payload is JSON, the topic says pb.
props = Properties(PacketTypes.PUBLISH)
props.ContentType = "application/json"
ct = c.publish(f"meters/{METER}/pb", report(1), qos=1, properties=props)
# QoS 2, once.
q2 = c.publish(f"meters/{METER}/json", report(2), qos=2)
# Another meter's topic: PUBACK 0x87.
forged = c.publish(f"meters/{OTHER}/json", report(3), qos=1)
# A burst far above the receive maximum: all answered, none dropped.
burst = [c.publish(f"meters/{METER}/json", report(100 + i), qos=1) for i in range(200)]
sub_all = c.subscribe("#", qos=1)
sub_own = c.subscribe(f"meters/{METER}/cmd/#", qos=1)

deadline = time.time() + 60
wanted = [ct.mid, q2.mid, forged.mid] + [b.mid for b in burst]
while time.time() < deadline:
    with acks_lock:
        if all(m in acks for m in wanted):
            break
    time.sleep(0.05)
subscribed.wait(30)
with acks_lock:
    seen["content_type_ack"] = acks.get(ct.mid)
    seen["qos2_ack"] = acks.get(q2.mid)
    seen["forged_ack"] = acks.get(forged.mid)
    seen["burst_acked"] = sum(1 for b in burst if acks.get(b.mid) == 0)
seen["suback_all"] = subacks.get(sub_all[1])
seen["suback_own"] = subacks.get(sub_own[1])

# Wait for the server to stop: it says why with a DISCONNECT.
print("READY", flush=True)
deadline = time.time() + 120
while "disconnect" not in seen and time.time() < deadline:
    time.sleep(0.05)
c.loop_stop()
print(json.dumps(seen), flush=True)
