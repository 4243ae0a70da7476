/*
 * edge_registry_plugin: routing and enforcement for the fleet-provisioning endpoint.
 *
 * Loaded by mosquitto 2.0 (`plugin .../edge_registry_plugin.so`). It holds no provisioning
 * logic: it moves fleet-provisioning requests from claim clients to the registry worker and
 * the worker's answers back to the one connection that asked, and refuses everything else.
 * See README.md beside this file for what it guarantees and its options.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <mqtt_protocol.h>

#define REQUEST_TOPIC "edge-registry/request"
#define REPLY_TOPIC "edge-registry/reply"
#define INTERNAL_PREFIX "edge-registry/"
#define PROP_CONN "edge-conn"
#define PROP_TOPIC "edge-topic"
#define PROP_CLAIM_SHA256 "edge-claim-sha256"
#define PROP_CLAIM_PEM "edge-claim-pem"
#define PROP_CLIENT_ID "edge-client-id"
#define BUCKETS 4096
#define TEMPLATE_NAME_MAX 36
#define PASSWORD_MAX 256

struct conn {
	struct mosquitto *client;
	char *client_id;
	char id[33];
	char fingerprint[65];
	char *pem;
	bool registry;
	bool claim;
	bool serving; /* a registry connection subscribed to the request topic */
	struct conn *next_by_client;
	struct conn *next_by_id;
};

static mosquitto_plugin_id_t *plugin_id;
static struct conn *by_client[BUCKETS];
static struct conn *by_id[BUCKETS];
static char registry_username[128] = "edge-registry";
static char registry_password[PASSWORD_MAX];
static uint32_t max_payload = 65536;
static X509 **claim_issuers;
static int claim_issuer_count;
static int serving_registries;

/* --- the connection table ------------------------------------------------------------- */

static size_t hash_ptr(const void *p)
{
	uintptr_t v = (uintptr_t)p;
	v ^= v >> 17;
	v *= 0x9E3779B97F4A7C15ULL;
	return (size_t)(v >> 20) % BUCKETS;
}

static size_t hash_str(const char *s)
{
	size_t h = 1469598103934665603ULL;
	while (*s) {
		h ^= (unsigned char)*s++;
		h *= 1099511628211ULL;
	}
	return h % BUCKETS;
}

static void conn_free(struct conn *c)
{
	mosquitto_free(c->client_id);
	mosquitto_free(c->pem);
	mosquitto_free(c);
}

static void conn_remove(struct mosquitto *client)
{
	size_t b = hash_ptr(client);
	struct conn **pp = &by_client[b];
	struct conn *c = NULL;
	while (*pp) {
		if ((*pp)->client == client) {
			c = *pp;
			*pp = c->next_by_client;
			break;
		}
		pp = &(*pp)->next_by_client;
	}
	if (c == NULL) {
		return;
	}
	if (c->serving) {
		serving_registries--;
	}
	pp = &by_id[hash_str(c->id)];
	while (*pp) {
		if (*pp == c) {
			*pp = c->next_by_id;
			break;
		}
		pp = &(*pp)->next_by_id;
	}
	conn_free(c);
}

static struct conn *conn_by_id(const char *id)
{
	struct conn *c = by_id[hash_str(id)];
	while (c && strcmp(c->id, id) != 0) {
		c = c->next_by_id;
	}
	return c;
}

static bool is_claim_certificate(X509 *cert)
{
	if (claim_issuer_count == 0) {
		return true;
	}
	for (int i = 0; i < claim_issuer_count; i++) {
		if (X509_check_issued(claim_issuers[i], cert) != X509_V_OK) {
			continue;
		}
		EVP_PKEY *key = X509_get0_pubkey(claim_issuers[i]);
		if (key != NULL && X509_verify(cert, key) == 1) {
			return true;
		}
	}
	return false;
}

static bool describe_certificate(struct conn *c, X509 *cert)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int len = 0;
	if (X509_digest(cert, EVP_sha256(), md, &len) != 1 || len != 32) {
		return false;
	}
	for (unsigned int i = 0; i < len; i++) {
		snprintf(c->fingerprint + 2 * i, 3, "%02x", md[i]);
	}
	BIO *bio = BIO_new(BIO_s_mem());
	if (bio == NULL) {
		return false;
	}
	bool ok = false;
	if (PEM_write_bio_X509(bio, cert) == 1) {
		char *data = NULL;
		long n = BIO_get_mem_data(bio, &data);
		if (n > 0 && (c->pem = mosquitto_calloc(1, (size_t)n + 1)) != NULL) {
			memcpy(c->pem, data, (size_t)n);
			ok = true;
		}
	}
	BIO_free(bio);
	return ok;
}

/* The entry of a client, made on first use. NULL for a client without a certificate that is
 * not the registry, or when memory runs out (callers then deny). */
static struct conn *conn_get(struct mosquitto *client, bool registry)
{
	const char *client_id = mosquitto_client_id(client);
	size_t b = hash_ptr(client);
	for (struct conn *c = by_client[b]; c; c = c->next_by_client) {
		if (c->client == client) {
			if (client_id && c->client_id && strcmp(client_id, c->client_id) == 0) {
				return c;
			}
			conn_remove(client); /* a reused context: start again */
			break;
		}
	}
	X509 *cert = NULL;
	if (!registry) {
		cert = mosquitto_client_certificate(client);
		if (cert == NULL) {
			return NULL;
		}
	}
	struct conn *c = mosquitto_calloc(1, sizeof(*c));
	unsigned char raw[16];
	if (c == NULL || RAND_bytes(raw, sizeof(raw)) != 1) {
		mosquitto_free(c);
		X509_free(cert);
		return NULL;
	}
	for (size_t i = 0; i < sizeof(raw); i++) {
		snprintf(c->id + 2 * i, 3, "%02x", raw[i]);
	}
	c->client = client;
	c->registry = registry;
	c->client_id = mosquitto_strdup(client_id ? client_id : "");
	if (c->client_id == NULL) {
		conn_free(c);
		X509_free(cert);
		return NULL;
	}
	if (cert != NULL) {
		c->claim = is_claim_certificate(cert);
		if (c->claim && !describe_certificate(c, cert)) {
			conn_free(c);
			X509_free(cert);
			return NULL;
		}
		X509_free(cert);
	}
	c->next_by_client = by_client[b];
	by_client[b] = c;
	size_t bi = hash_str(c->id);
	c->next_by_id = by_id[bi];
	by_id[bi] = c;
	return c;
}

static struct conn *conn_find(struct mosquitto *client)
{
	for (struct conn *c = by_client[hash_ptr(client)]; c; c = c->next_by_client) {
		if (c->client == client) {
			return c;
		}
	}
	return NULL;
}

static bool is_registry(struct mosquitto *client)
{
	struct conn *c = conn_find(client);
	if (c == NULL || !c->registry) {
		return false;
	}
	const char *client_id = mosquitto_client_id(client);
	return client_id && strcmp(client_id, c->client_id) == 0;
}

/* --- topics --------------------------------------------------------------------------- */

static const char *format_suffix(const char *p)
{
	if (strncmp(p, "json", 4) == 0) {
		return p + 4;
	}
	if (strncmp(p, "cbor", 4) == 0) {
		return p + 4;
	}
	return NULL;
}

/* The end of the request part of a fleet-provisioning topic, or NULL. */
static const char *request_end(const char *t)
{
	const char *p;
	if (strncmp(t, "$aws/certificates/create-from-csr/", 34) == 0) {
		p = t + 34;
	} else if (strncmp(t, "$aws/certificates/create/", 25) == 0) {
		p = t + 25;
	} else if (strncmp(t, "$aws/provisioning-templates/", 28) == 0) {
		p = t + 28;
		size_t n = 0;
		while (p[n] && p[n] != '/') {
			char ch = p[n];
			bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
				  (ch >= '0' && ch <= '9') || ch == '_' || ch == '-';
			if (!ok) {
				return NULL;
			}
			n++;
		}
		if (n == 0 || n > TEMPLATE_NAME_MAX || strncmp(p + n, "/provision/", 11) != 0) {
			return NULL;
		}
		p += n + 11;
	} else {
		return NULL;
	}
	return format_suffix(p);
}

static bool is_request_topic(const char *t)
{
	const char *end = request_end(t);
	return end != NULL && *end == '\0';
}

static bool is_response_topic(const char *t)
{
	const char *end = request_end(t);
	return end != NULL && (strcmp(end, "/accepted") == 0 || strcmp(end, "/rejected") == 0);
}

static const char *unshared(const char *filter)
{
	if (strncmp(filter, "$share/", 7) != 0) {
		return filter;
	}
	const char *slash = strchr(filter + 7, '/');
	return slash ? slash + 1 : filter;
}

/* --- callbacks ------------------------------------------------------------------------ */

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	(void)event;
	(void)userdata;
	if (ed->username && strcmp(ed->username, registry_username) == 0) {
		if (registry_password[0] == '\0' || ed->password == NULL ||
		    strlen(ed->password) != strlen(registry_password) ||
		    CRYPTO_memcmp(ed->password, registry_password, strlen(registry_password)) != 0) {
			return MOSQ_ERR_AUTH;
		}
		conn_remove(ed->client);
		return conn_get(ed->client, true) ? MOSQ_ERR_SUCCESS : MOSQ_ERR_AUTH;
	}
	struct conn *c = conn_get(ed->client, false);
	if (c != NULL && c->claim) {
		/* Authenticated by its claim certificate (mutual TLS); refused while no registry
		 * worker takes requests, so a device never waits for an answer that cannot come. */
		return serving_registries > 0 ? MOSQ_ERR_SUCCESS : MOSQ_ERR_AUTH;
	}
	return MOSQ_ERR_PLUGIN_DEFER;
}

static int registry_acl(const struct mosquitto_evt_acl_check *ed)
{
	switch (ed->access) {
	case MOSQ_ACL_SUBSCRIBE:
		if (strcmp(unshared(ed->topic), REQUEST_TOPIC) != 0) {
			return MOSQ_ERR_ACL_DENIED;
		}
		struct conn *c = conn_find(ed->client);
		if (c != NULL && !c->serving) {
			c->serving = true;
			serving_registries++;
		}
		return MOSQ_ERR_SUCCESS;
	case MOSQ_ACL_READ:
		return strcmp(unshared(ed->topic), REQUEST_TOPIC) == 0 ? MOSQ_ERR_SUCCESS
									: MOSQ_ERR_ACL_DENIED;
	case MOSQ_ACL_WRITE:
		return strcmp(ed->topic, REPLY_TOPIC) == 0 ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
	case MOSQ_ACL_UNSUBSCRIBE:
		return MOSQ_ERR_SUCCESS;
	default:
		return MOSQ_ERR_ACL_DENIED;
	}
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	(void)event;
	(void)userdata;
	if (is_registry(ed->client)) {
		return registry_acl(ed);
	}
	const char *topic = ed->access == MOSQ_ACL_SUBSCRIBE || ed->access == MOSQ_ACL_UNSUBSCRIBE
				    ? unshared(ed->topic)
				    : ed->topic;
	struct conn *c = conn_get(ed->client, false);
	if (c != NULL && c->claim) {
		switch (ed->access) {
		case MOSQ_ACL_WRITE:
			if (is_request_topic(ed->topic) && ed->payloadlen <= max_payload && !ed->retain) {
				return MOSQ_ERR_SUCCESS;
			}
			return MOSQ_ERR_ACL_DENIED;
		case MOSQ_ACL_SUBSCRIBE:
			return topic == ed->topic && is_response_topic(topic) ? MOSQ_ERR_SUCCESS
									      : MOSQ_ERR_ACL_DENIED;
		case MOSQ_ACL_UNSUBSCRIBE:
			return MOSQ_ERR_SUCCESS;
		default:
			/* Answers reach a claim client only as targeted copies, which are not
			 * checked; every other delivery to it is refused. */
			return MOSQ_ERR_ACL_DENIED;
		}
	}
	if (strncmp(topic, "$aws/", 5) == 0 || strncmp(topic, INTERNAL_PREFIX, 14) == 0) {
		return MOSQ_ERR_ACL_DENIED;
	}
	/* Other clients (an operator's own broker): their own rules apply; READ at delivery still
	 * hides the internal and $aws topics from a wildcard subscription. */
	return MOSQ_ERR_PLUGIN_DEFER;
}

static char *user_property(const mosquitto_property *props, const char *want)
{
	char *name = NULL;
	char *value = NULL;
	const mosquitto_property *p =
		mosquitto_property_read_string_pair(props, MQTT_PROP_USER_PROPERTY, &name, &value, false);
	while (p != NULL) {
		bool match = strcmp(name, want) == 0;
		mosquitto_free(name);
		if (match) {
			return value;
		}
		mosquitto_free(value);
		name = value = NULL;
		p = mosquitto_property_read_string_pair(p, MQTT_PROP_USER_PROPERTY, &name, &value, true);
	}
	return NULL;
}

static int deliver_reply(struct mosquitto_evt_message *ed)
{
	char *conn_id = user_property(ed->properties, PROP_CONN);
	char *topic = user_property(ed->properties, PROP_TOPIC);
	if (conn_id != NULL && topic != NULL && is_response_topic(topic)) {
		struct conn *c = conn_by_id(conn_id);
		if (c != NULL && c->claim) {
			int rc = mosquitto_broker_publish_copy(c->client_id, topic, (int)ed->payloadlen,
							       ed->payload, 1, false, NULL);
			if (rc != MOSQ_ERR_SUCCESS) {
				mosquitto_log_printf(MOSQ_LOG_WARNING,
						     "edge-registry: reply not delivered (%d)", rc);
			}
		}
	}
	mosquitto_free(conn_id);
	mosquitto_free(topic);
	return MOSQ_ERR_SUCCESS;
}

static int forward_request(struct mosquitto_evt_message *ed, struct conn *c)
{
	mosquitto_property *props = NULL;
	int rc = mosquitto_property_add_string_pair(&props, MQTT_PROP_USER_PROPERTY, PROP_CONN, c->id);
	if (rc == MOSQ_ERR_SUCCESS) {
		rc = mosquitto_property_add_string_pair(&props, MQTT_PROP_USER_PROPERTY, PROP_TOPIC,
							 ed->topic);
	}
	if (rc == MOSQ_ERR_SUCCESS) {
		rc = mosquitto_property_add_string_pair(&props, MQTT_PROP_USER_PROPERTY,
							 PROP_CLAIM_SHA256, c->fingerprint);
	}
	if (rc == MOSQ_ERR_SUCCESS) {
		rc = mosquitto_property_add_string_pair(&props, MQTT_PROP_USER_PROPERTY,
							 PROP_CLAIM_PEM, c->pem);
	}
	if (rc == MOSQ_ERR_SUCCESS) {
		rc = mosquitto_property_add_string_pair(&props, MQTT_PROP_USER_PROPERTY,
							 PROP_CLIENT_ID, c->client_id);
	}
	char *topic = mosquitto_strdup(REQUEST_TOPIC);
	if (rc != MOSQ_ERR_SUCCESS || topic == NULL) {
		mosquitto_property_free_all(&props);
		mosquitto_free(topic);
		return MOSQ_ERR_NOMEM;
	}
	/* The device's own properties never reach the registry: it cannot forge them. */
	mosquitto_property_free_all(&ed->properties);
	ed->properties = props;
	mosquitto_free(ed->topic);
	ed->topic = topic;
	ed->retain = false;
	return MOSQ_ERR_SUCCESS;
}

static int on_message(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_message *ed = event_data;
	(void)event;
	(void)userdata;
	if (is_registry(ed->client)) {
		return strcmp(ed->topic, REPLY_TOPIC) == 0 ? deliver_reply(ed) : MOSQ_ERR_SUCCESS;
	}
	if (!is_request_topic(ed->topic)) {
		return MOSQ_ERR_SUCCESS;
	}
	struct conn *c = conn_get(ed->client, false);
	if (c == NULL || !c->claim) {
		return MOSQ_ERR_ACL_DENIED;
	}
	return forward_request(ed, c);
}

static int on_disconnect(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_disconnect *ed = event_data;
	(void)event;
	(void)userdata;
	conn_remove(ed->client);
	return MOSQ_ERR_SUCCESS;
}

/* --- options -------------------------------------------------------------------------- */

static bool read_password(const char *path)
{
	FILE *f = fopen(path, "r");
	if (f == NULL) {
		return false;
	}
	size_t n = fread(registry_password, 1, sizeof(registry_password) - 1, f);
	fclose(f);
	registry_password[n] = '\0';
	while (n > 0 && (registry_password[n - 1] == '\n' || registry_password[n - 1] == '\r')) {
		registry_password[--n] = '\0';
	}
	return n > 0;
}

static bool read_claim_issuers(const char *path)
{
	FILE *f = fopen(path, "r");
	if (f == NULL) {
		return false;
	}
	X509 *cert;
	while ((cert = PEM_read_X509(f, NULL, NULL, NULL)) != NULL) {
		X509 **grown = realloc(claim_issuers, sizeof(X509 *) * (size_t)(claim_issuer_count + 1));
		if (grown == NULL) {
			X509_free(cert);
			break;
		}
		claim_issuers = grown;
		claim_issuers[claim_issuer_count++] = cert;
	}
	fclose(f);
	return claim_issuer_count > 0;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for (int i = 0; i < supported_version_count; i++) {
		if (supported_versions[i] == 5) {
			return 5;
		}
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
			  struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	plugin_id = identifier;
	for (int i = 0; i < option_count; i++) {
		const char *key = options[i].key;
		const char *value = options[i].value;
		if (strcmp(key, "registry_username") == 0) {
			snprintf(registry_username, sizeof(registry_username), "%s", value);
		} else if (strcmp(key, "registry_password_file") == 0) {
			if (!read_password(value)) {
				mosquitto_log_printf(MOSQ_LOG_ERR, "edge-registry: cannot read %s", value);
				return MOSQ_ERR_INVAL;
			}
		} else if (strcmp(key, "claim_cafile") == 0) {
			if (!read_claim_issuers(value)) {
				mosquitto_log_printf(MOSQ_LOG_ERR, "edge-registry: no certificate in %s",
						     value);
				return MOSQ_ERR_INVAL;
			}
		} else if (strcmp(key, "max_payload") == 0) {
			long n = strtol(value, NULL, 10);
			if (n < 1024 || n > 268435455) {
				mosquitto_log_printf(MOSQ_LOG_ERR, "edge-registry: bad max_payload");
				return MOSQ_ERR_INVAL;
			}
			max_payload = (uint32_t)n;
		} else {
			mosquitto_log_printf(MOSQ_LOG_ERR, "edge-registry: unknown option %s", key);
			return MOSQ_ERR_INVAL;
		}
	}
	if (registry_password[0] == '\0') {
		mosquitto_log_printf(MOSQ_LOG_ERR, "edge-registry: registry_password_file is required");
		return MOSQ_ERR_INVAL;
	}
	int rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, NULL);
	if (rc == MOSQ_ERR_SUCCESS) {
		rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL);
	}
	if (rc == MOSQ_ERR_SUCCESS) {
		rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL, NULL);
	}
	if (rc == MOSQ_ERR_SUCCESS) {
		rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL,
						 NULL);
	}
	return rc;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL);
	for (size_t b = 0; b < BUCKETS; b++) {
		struct conn *c = by_client[b];
		while (c) {
			struct conn *next = c->next_by_client;
			conn_free(c);
			c = next;
		}
		by_client[b] = NULL;
		by_id[b] = NULL;
	}
	for (int i = 0; i < claim_issuer_count; i++) {
		X509_free(claim_issuers[i]);
	}
	free(claim_issuers);
	claim_issuers = NULL;
	claim_issuer_count = 0;
	OPENSSL_cleanse(registry_password, sizeof(registry_password));
	return MOSQ_ERR_SUCCESS;
}
